"""Model registry: uploads (safe, refused, too large), list, get, download, delete, eval data."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from state.settings import Settings
from tests.api import model_files as mf
from tests.conftest import AuthHeaders, MakeUser, UploadModel


@pytest.fixture
def files(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


def leftovers(settings: Settings) -> list[Path]:
    """Every file under the uploads and artifacts folders (a refused upload must leave none)."""
    found: list[Path] = []
    for root in (settings.uploads_dir, settings.artifacts_dir):
        if root.exists():
            found += [p for p in root.rglob("*") if p.is_file()]
    # The checksums the store records beside what it keeps are part of those artifacts, not leftovers.
    return [p for p in found if not p.name.endswith((".sha256", ".manifest.json"))]


async def model_count(client: httpx.AsyncClient, headers: AuthHeaders) -> int:
    r = await client.get("/models", headers=headers)
    assert r.status_code == 200
    return int(r.json()["total"])


async def assert_refused(
    r: httpx.Response,
    status: int,
    error: str,
    client: httpx.AsyncClient,
    headers: AuthHeaders,
    settings: Settings,
) -> dict[str, object]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message", "details"}
    assert body["error"] == error, body
    assert leftovers(settings) == []
    assert await model_count(client, headers) == 0
    return body


# ---------------------------------------------------------------------------------------------
# accepted uploads


async def test_upload_onnx_stores_metadata_and_signature(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    files: Path,
    settings: Settings,
) -> None:
    path = mf.onnx_model(files / "policy.onnx")
    r = await upload_model(
        admin_headers, path, name="My OpenVLA Model", description="Fine-tuned for manipulation"
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == body["id"]
    assert body["name"] == "My OpenVLA Model"
    assert body["description"] == "Fine-tuned for manipulation"
    assert body["format"] == "onnx" and body["extension"] == ".onnx"
    assert body["original_filename"] == "policy.onnx"
    assert body["size_bytes"] == path.stat().st_size
    assert body["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert body["owner_id"] == admin_headers.user_id
    assert body["input_spec"] == [
        {"name": "obs", "shape": [None, 4], "dtype": "float32", "low": None, "high": None}
    ]
    assert body["format_details"]["opset"] == 17
    assert "stored_path" not in body
    # Stored under a server-generated id, not the client's name; no temporary file left.
    stored = settings.artifacts_dir / "models" / body["id"] / "model.onnx"
    assert stored.read_bytes() == path.read_bytes()
    assert [p for p in settings.uploads_dir.iterdir()] == []


async def test_upload_torchscript(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, upload_model: UploadModel, files: Path
) -> None:
    r = await upload_model(admin_headers, mf.torchscript_model(files / "policy.pt"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["format"] == "torchscript"
    assert body["name"] == "policy"  # defaults to the file name
    assert body["format_details"]["is_torchscript"] is True


async def test_upload_state_dict_with_architecture_gets_its_signature(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, upload_model: UploadModel, files: Path
) -> None:
    import json

    r = await upload_model(
        admin_headers, mf.mlp_state_dict(files / "w.pth"), architecture=json.dumps(mf.MLP_ARCH)
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["format"] == "state_dict"
    assert body["architecture"]["name"] == "mlp_policy"
    assert body["input_spec"][0]["name"] == "obs" and body["input_spec"][0]["shape"] == [None, 4]


async def test_upload_state_dict_without_architecture_is_stored_without_signature(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, upload_model: UploadModel, files: Path
) -> None:
    r = await upload_model(admin_headers, mf.mlp_state_dict(files / "w.pt"))
    assert r.status_code == 200, r.text
    assert r.json()["format"] == "state_dict" and r.json()["input_spec"] is None
    r = await upload_model(admin_headers, mf.safetensors_weights(files / "w.safetensors"))
    assert r.status_code == 200, r.text
    assert r.json()["format"] == "safetensors" and r.json()["input_spec"] is None
    assert r.json()["format_details"]["tensor_count"] == 2


async def test_state_dict_with_wrong_or_unknown_architecture(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    files: Path,
    settings: Settings,
) -> None:
    path = mf.mlp_state_dict(files / "w.pth")
    wrong = '{"name": "mlp_policy", "config": {"obs_dim": 9, "act_dim": 2, "hidden": [8]}}'
    r = await upload_model(admin_headers, path, architecture=wrong)
    body = await assert_refused(r, 422, "invalid_model", client, admin_headers, settings)
    assert "mlp_policy" in str(body["message"])
    r = await upload_model(admin_headers, path, architecture='{"name": "no_such_architecture"}')
    body = await assert_refused(r, 422, "invalid_argument", client, admin_headers, settings)
    assert "no_such_architecture" in str(body["message"])
    r = await upload_model(admin_headers, path, architecture="{not json")
    await assert_refused(r, 422, "validation_error", client, admin_headers, settings)


async def test_pb_and_clean_h5_are_stored_for_inspection(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, upload_model: UploadModel, files: Path
) -> None:
    r = await upload_model(admin_headers, mf.tensorflow_pb(files / "graph.pb"))
    assert r.status_code == 200, r.text
    assert r.json()["format"] == "tensorflow_pb" and r.json()["input_spec"] is None
    r = await upload_model(admin_headers, mf.keras_h5(files / "model.h5", with_lambda=False))
    assert r.status_code == 200, r.text
    assert r.json()["format"] == "keras_h5" and r.json()["input_spec"] is None


# ---------------------------------------------------------------------------------------------
# refused uploads


@pytest.mark.parametrize("kind", ["raw_pickle.pt", "torch_zip.pth"])
async def test_pickle_that_would_create_a_file_is_refused_and_never_run(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    files: Path,
    settings: Settings,
    tmp_path: Path,
    kind: str,
) -> None:
    marker = tmp_path / "pwned"
    path = files / kind
    if kind.startswith("raw"):
        mf.malicious_pickle(path, marker)
    else:
        mf.malicious_torch_zip(path, marker)
    r = await upload_model(admin_headers, path)
    body = await assert_refused(r, 422, "unsafe_model", client, admin_headers, settings)
    assert "system" in str(body["message"]) + str(body["details"])
    assert not marker.exists()
    # Control: the very same file, loaded the unsafe way in a subprocess, does create the marker,
    # so the refusal above is what kept it from appearing.
    load = (
        "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
        if kind.startswith("raw")
        else "import sys, torch; torch.load(sys.argv[1], weights_only=False)"
    )
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    subprocess.run([sys.executable, "-c", load, str(path)], cwd=sandbox, check=True, timeout=120)
    assert marker.exists()


async def test_keras_lambda_layer_is_refused(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    files: Path,
    settings: Settings,
) -> None:
    r = await upload_model(admin_headers, mf.keras_h5(files / "model.h5", with_lambda=True))
    body = await assert_refused(r, 422, "unsafe_model", client, admin_headers, settings)
    assert "Lambda" in str(body["message"])


async def test_onnx_with_external_data_is_refused(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    files: Path,
    settings: Settings,
) -> None:
    r = await upload_model(admin_headers, mf.onnx_with_external_data(files / "ext.onnx"))
    body = await assert_refused(r, 422, "unsafe_model", client, admin_headers, settings)
    assert "external" in str(body["message"]).lower()


@pytest.mark.parametrize("source", ["onnx", "torchscript"])
async def test_truncated_files_are_refused(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    files: Path,
    settings: Settings,
    source: str,
) -> None:
    if source == "onnx":
        full, name = mf.onnx_model(files / "full.onnx"), "cut.onnx"
    else:
        full, name = mf.torchscript_model(files / "full.pt"), "cut.pt"
    r = await upload_model(admin_headers, mf.truncated(full, files / name))
    await assert_refused(r, 422, "invalid_model", client, admin_headers, settings)


@pytest.mark.parametrize(
    ("builder", "filename"),
    [("onnx", "model.pt"), ("zip", "model.onnx"), ("text", "model.safetensors"), ("onnx", "model.h5")],
)
async def test_content_that_does_not_match_its_extension(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    files: Path,
    settings: Settings,
    builder: str,
    filename: str,
) -> None:
    if builder == "onnx":
        path = mf.onnx_model(files / "src.onnx")
    elif builder == "zip":
        path = mf.zip_archive(files / "src.zip")
    else:
        path = files / "src.txt"
        path.write_text("hello, I am not a model")
    r = await upload_model(admin_headers, path, filename=filename)
    await assert_refused(r, 422, "invalid_model", client, admin_headers, settings)


@pytest.mark.parametrize(
    "filename", ["model.exe", "model.pkl", "model", "model.onnx.sh", "../../etc/model.rar"]
)
async def test_wrong_extension_is_refused_before_reading_the_file(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    files: Path,
    settings: Settings,
    filename: str,
) -> None:
    r = await upload_model(admin_headers, mf.onnx_model(files / "m.onnx"), filename=filename)
    body = await assert_refused(r, 400, "unsupported_format", client, admin_headers, settings)
    assert ".onnx" in body["details"]["allowed_extensions"]  # type: ignore[index]


async def test_oversized_upload_is_413_and_leaves_nothing(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    files: Path,
    settings: Settings,
) -> None:
    big = files / "big.onnx"
    big.write_bytes(b"\0" * (settings.max_upload_bytes + 1))
    r = await upload_model(admin_headers, big)
    body = await assert_refused(r, 413, "payload_too_large", client, admin_headers, settings)
    assert body["details"]["max_bytes"] == settings.max_upload_bytes  # type: ignore[index]


def _multipart(boundary: str, filename: str, payload: bytes) -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )


async def test_size_limit_holds_when_content_length_lies(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, settings: Settings
) -> None:
    boundary = "robopt-boundary"
    body = _multipart(boundary, "big.onnx", b"\0" * (3 * settings.max_upload_bytes))
    sent = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        for i in range(0, len(body), 64 * 1024):
            sent += 1
            yield body[i : i + 64 * 1024]

    headers = {
        **admin_headers,
        "content-type": f"multipart/form-data; boundary={boundary}",
        "content-length": "1000",  # a lie: the body is three times the limit
    }
    r = await client.post("/models/upload", headers=headers, content=stream())
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "payload_too_large"
    assert leftovers(settings) == []
    # The server stopped reading well before the end of the body.
    assert sent < len(body) // (64 * 1024)


async def test_declared_oversized_body_is_refused_before_reading(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, settings: Settings
) -> None:
    headers = {
        **admin_headers,
        "content-type": "multipart/form-data; boundary=x",
        "content-length": str(10 * settings.max_upload_bytes),
    }
    r = await client.post("/models/upload", headers=headers, content=b"--x--\r\n")
    assert r.status_code == 413
    assert leftovers(settings) == []


async def test_malformed_and_incomplete_uploads(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, settings: Settings
) -> None:
    r = await client.post("/models/upload", headers=admin_headers, json={"file": "x"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    r = await client.post(
        "/models/upload", headers=admin_headers, data={"name": "no file"}, files={"x": ("a", b"")}
    )
    assert r.status_code == 400  # a file in the wrong field
    r = await client.post(
        "/models/upload",
        headers={**admin_headers, "content-type": "multipart/form-data; boundary=b"},
        content=b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n--b--\r\n',
    )
    assert r.status_code == 422 and "file is required" in r.json()["details"]
    # Cut off in the middle of the file part: no closing boundary.
    cut = _multipart("b", "m.onnx", b"\x08\x01" * 100)[:-20]
    r = await client.post(
        "/models/upload",
        headers={**admin_headers, "content-type": "multipart/form-data; boundary=b"},
        content=cut,
    )
    assert r.status_code == 400
    assert leftovers(settings) == []


async def test_upload_needs_authentication(
    client: httpx.AsyncClient, files: Path, settings: Settings
) -> None:
    path = mf.onnx_model(files / "m.onnx")
    r = await client.post("/models/upload", files={"file": ("m.onnx", path.read_bytes())})
    assert r.status_code == 401
    assert leftovers(settings) == []


# ---------------------------------------------------------------------------------------------
# list, get, download, delete, ownership


async def test_list_is_paginated_newest_first(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, upload_model: UploadModel, files: Path
) -> None:
    path = mf.onnx_model(files / "m.onnx")
    ids = [(await upload_model(admin_headers, path, name=f"m{i}")).json()["id"] for i in range(3)]
    r = await client.get("/models", params={"limit": 2}, headers=admin_headers)
    assert r.status_code == 200
    page = r.json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0
    assert [m["id"] for m in page["items"]] == [ids[2], ids[1]]
    page2 = (await client.get("/models", params={"limit": 2, "offset": 2}, headers=admin_headers)).json()
    assert [m["id"] for m in page2["items"]] == [ids[0]]
    r = await client.get("/models", params={"limit": 0}, headers=admin_headers)
    assert r.status_code == 422 and r.json()["error"] == "validation_error"


async def test_users_see_only_their_own_models(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    make_user: MakeUser,
    upload_model: UploadModel,
    files: Path,
    settings: Settings,
) -> None:
    alice, bob = await make_user("user"), await make_user("user")
    path = mf.onnx_model(files / "m.onnx")
    alice_model = (await upload_model(alice, path, name="alice's")).json()["id"]
    bob_model = (await upload_model(bob, path, name="bob's")).json()["id"]

    listed = (await client.get("/models", headers=bob)).json()
    assert [m["id"] for m in listed["items"]] == [bob_model] and listed["total"] == 1
    # Another user's model is "not found", never "forbidden", and none of its data leaks.
    for method, url in (
        ("GET", f"/models/{alice_model}"),
        ("GET", f"/models/{alice_model}/download"),
        ("DELETE", f"/models/{alice_model}"),
    ):
        r = await client.request(method, url, headers=bob)
        assert r.status_code == 404, (method, url)
        assert r.json() == {"error": "not_found", "message": "Model not found", "details": None}
    npz = mf.eval_npz(files / "e.npz")
    r = await client.post(
        f"/models/{alice_model}/evaluation-data", headers=bob, files={"file": ("e.npz", npz.read_bytes())}
    )
    assert r.status_code == 404
    # The model is untouched and the admin sees both.
    assert (await client.get(f"/models/{alice_model}", headers=alice)).status_code == 200
    assert (await client.get("/models", headers=admin_headers)).json()["total"] == 2
    assert (await client.get(f"/models/{alice_model}", headers=admin_headers)).status_code == 200


async def test_get_unknown_model(client: httpx.AsyncClient, admin_headers: AuthHeaders) -> None:
    r = await client.get("/models/0123456789abcdef0123456789abcdef", headers=admin_headers)
    assert r.status_code == 404 and r.json()["error"] == "not_found"


async def test_download_returns_the_exact_bytes(
    client: httpx.AsyncClient, make_user: MakeUser, upload_model: UploadModel, files: Path
) -> None:
    user = await make_user("user")
    path = mf.onnx_model(files / "policy.onnx")
    model = (await upload_model(user, path)).json()
    r = await client.get(f"/models/{model['id']}/download", headers=user)
    assert r.status_code == 200
    assert r.content == path.read_bytes()
    assert r.headers["x-content-sha256"] == model["sha256"]
    assert 'filename="policy.onnx"' in r.headers["content-disposition"]


async def test_delete_removes_row_and_file(
    client: httpx.AsyncClient, make_user: MakeUser, upload_model: UploadModel, files: Path, settings: Settings
) -> None:
    user = await make_user("user")
    model_id = (await upload_model(user, mf.onnx_model(files / "m.onnx"))).json()["id"]
    assert (settings.artifacts_dir / "models" / model_id).is_dir()
    r = await client.delete(f"/models/{model_id}", headers=user)
    assert r.status_code == 200 and r.json() == {"deleted": True, "id": model_id}
    assert (await client.get(f"/models/{model_id}", headers=user)).status_code == 404
    assert not (settings.artifacts_dir / "models" / model_id).exists()
    assert (await client.delete(f"/models/{model_id}", headers=user)).status_code == 404


@pytest.mark.skipif(importlib.util.find_spec("state.sessions") is None, reason="sessions table not present")
async def test_delete_is_409_while_a_running_optimization_uses_the_model(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser, upload_model: UploadModel, files: Path
) -> None:
    from state.sessions import OptimizationSession

    user = await make_user("user")
    model_id = (await upload_model(user, mf.onnx_model(files / "m.onnx"))).json()["id"]
    async with app.state.sessionmaker() as db:
        row = OptimizationSession(owner_id=user.user_id, model_id=model_id, status="running", criteria={})
        db.add(row)
        await db.commit()
        session_id = row.id
    r = await client.delete(f"/models/{model_id}", headers=user)
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    async with app.state.sessionmaker() as db:
        row = await db.get(OptimizationSession, session_id)
        assert row is not None
        row.status = "completed"
        db.add(row)
        await db.commit()
    assert (await client.delete(f"/models/{model_id}", headers=user)).status_code == 200


# ---------------------------------------------------------------------------------------------
# evaluation data


async def _post_eval(
    client: httpx.AsyncClient, headers: AuthHeaders, model_id: str, path: Path, name: str | None = None
) -> httpx.Response:
    return await client.post(
        f"/models/{model_id}/evaluation-data",
        headers=headers,
        files={"file": (name or path.name, path.read_bytes())},
    )


async def test_attach_evaluation_data(
    client: httpx.AsyncClient, make_user: MakeUser, upload_model: UploadModel, files: Path, settings: Settings
) -> None:
    user = await make_user("user")
    model_id = (await upload_model(user, mf.onnx_model(files / "m.onnx"))).json()["id"]
    r = await _post_eval(client, user, model_id, mf.eval_npz(files / "data.npz"))
    assert r.status_code == 200, r.text
    info = r.json()["eval_data_info"]
    assert info["num_samples"] == 8 and info["has_targets"] is True
    assert info["inputs"] == {"obs": {"shape": [8, 4], "dtype": "float32"}}
    assert info["filename"] == "data.npz"
    assert (settings.artifacts_dir / "models" / model_id / "eval_data.npz").is_file()
    # Replacing it with a target-free set keeps one file.
    r = await _post_eval(client, user, model_id, mf.eval_npz(files / "d2.npz", n=5, targets=False))
    assert r.status_code == 200 and r.json()["eval_data_info"]["has_targets"] is False
    assert r.json()["eval_data_info"]["num_samples"] == 5
    assert sorted(p.name for p in leftovers(settings)) == ["eval_data.npz", "model.onnx"]
    stored = settings.artifacts_dir / "models" / model_id
    assert {p.name for p in stored.glob("*.sha256")} == {"eval_data.npz.sha256", "model.onnx.sha256"}


async def test_evaluation_data_refusals(
    client: httpx.AsyncClient, make_user: MakeUser, upload_model: UploadModel, files: Path, settings: Settings
) -> None:
    user = await make_user("user")
    model_id = (await upload_model(user, mf.onnx_model(files / "m.onnx"))).json()["id"]
    # Names that are not the model's inputs.
    r = await _post_eval(client, user, model_id, mf.eval_npz(files / "a.npz", names=("image",)))
    assert r.status_code == 422 and r.json()["error"] == "data_mismatch"
    # Wrong fixed axis (model expects 4 features).
    r = await _post_eval(client, user, model_id, mf.eval_npz(files / "b.npz", dim=3))
    assert r.status_code == 422 and r.json()["error"] == "data_mismatch"
    # Object arrays would need pickle.
    r = await _post_eval(client, user, model_id, mf.eval_npz_with_objects(files / "c.npz"))
    assert r.status_code == 422 and r.json()["error"] == "unsafe_model"
    # Wrong extension and truncated archive.
    r = await _post_eval(client, user, model_id, mf.eval_npz(files / "d.npz"), name="d.pkl")
    assert r.status_code == 400 and r.json()["error"] == "unsupported_format"
    r = await _post_eval(client, user, model_id, mf.truncated(mf.eval_npz(files / "e.npz"), files / "f.npz"))
    assert r.status_code == 422 and r.json()["error"] == "invalid_model"
    # Nothing attached, nothing left behind.
    assert (await client.get(f"/models/{model_id}", headers=user)).json()["eval_data_info"] is None
    assert sorted(p.name for p in leftovers(settings)) == ["model.onnx"]


async def test_oversized_evaluation_data_is_413_and_leaves_nothing(
    client: httpx.AsyncClient, make_user: MakeUser, upload_model: UploadModel, files: Path, settings: Settings
) -> None:
    user = await make_user("user")
    model_id = (await upload_model(user, mf.onnx_model(files / "m.onnx"))).json()["id"]
    n = settings.max_upload_bytes // (4 * 4) + 1024  # float32 (n, 4): just over the limit
    big = mf.eval_npz(files / "big.npz", n=n, targets=False)
    assert big.stat().st_size > settings.max_upload_bytes
    r = await _post_eval(client, user, model_id, big)
    assert r.status_code == 413, r.text
    body = r.json()
    assert set(body) == {"error", "message", "details"} and body["error"] == "payload_too_large"
    assert body["details"]["max_bytes"] == settings.max_upload_bytes
    assert (await client.get(f"/models/{model_id}", headers=user)).json()["eval_data_info"] is None
    assert sorted(p.name for p in leftovers(settings)) == ["model.onnx"]


async def test_evaluation_data_needs_a_model_with_a_signature(
    client: httpx.AsyncClient, make_user: MakeUser, upload_model: UploadModel, files: Path
) -> None:
    user = await make_user("user")
    model_id = (await upload_model(user, mf.tensorflow_pb(files / "g.pb"))).json()["id"]
    r = await _post_eval(client, user, model_id, mf.eval_npz(files / "a.npz"))
    assert r.status_code == 422 and r.json()["error"] == "data_mismatch"
    r = await _post_eval(client, user, "0" * 32, mf.eval_npz(files / "a.npz"))
    assert r.status_code == 404
