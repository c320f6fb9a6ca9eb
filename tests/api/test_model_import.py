"""POST /models/import: files already on the server, allow-listed, registered without a copy."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from state.settings import Settings
from tests.api import model_files
from tests.api.session_helpers import wait_terminal, write_policy
from tests.conftest import AuthHeaders, MakeUser, make_settings


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    (tmp_path / "imports").mkdir()
    return make_settings(tmp_path / "data", db_url, model_import_dirs=[tmp_path / "imports"])


def _assert_refused(r: httpx.Response, status: int, error: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message", "details"} and body["error"] == error, body


async def _nothing_registered(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    assert (await client.get("/models", headers=headers)).json()["total"] == 0


async def test_paths_outside_the_allow_list_are_refused(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, make_user: MakeUser, tmp_path: Path
) -> None:
    imports = tmp_path / "imports"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    secret = model_files.onnx_model(outside / "model.onnx")
    (imports / "link.onnx").symlink_to(secret)
    (imports / "linked-dir").symlink_to(outside, target_is_directory=True)
    (tmp_path / "imports-evil").mkdir()  # a sibling whose name starts like the allowed directory
    model_files.onnx_model(tmp_path / "imports-evil" / "model.onnx")

    for path in (
        str(secret),
        str(imports / "link.onnx"),  # a symlink pointing outside
        str(imports / "linked-dir" / "model.onnx"),
        f"{imports}/../elsewhere/model.onnx",  # `..` tricks
        f"{imports}/./sub/../../elsewhere/model.onnx",
        str(tmp_path / "imports-evil" / "model.onnx"),
    ):
        r = await client.post("/models/import", headers=admin_headers, json={"path": path, "name": "x"})
        _assert_refused(r, 403, "path_not_allowed")
    r = await client.post("/models/import", headers=admin_headers, json={"path": "model.onnx", "name": "x"})
    _assert_refused(r, 422, "validation_error")

    # A user without an allowed role is refused before the path is even looked at.
    user = await make_user("user")
    model_files.onnx_model(imports / "ok.onnx")
    r = await client.post(
        "/models/import", headers=user, json={"path": str(imports / "ok.onnx"), "name": "x"}
    )
    _assert_refused(r, 403, "forbidden")
    await _nothing_registered(client, admin_headers)
    await _nothing_registered(client, user)


async def test_import_registers_without_a_copy_and_re_verifies(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, settings: Settings, tmp_path: Path
) -> None:
    path = model_files.onnx_model(tmp_path / "imports" / "policy.onnx")
    r = await client.post(
        "/models/import",
        headers=admin_headers,
        json={"path": str(path), "name": "imported", "description": "d"},
    )
    assert r.status_code == 200, r.text
    model = r.json()
    assert model["format"] == "onnx" and model["input_spec"][0]["name"] == "obs"
    assert model["format_details"]["imported"] == {"path": str(path.resolve()), "digest": "sha256"}
    store_dir = settings.artifacts_dir / "models" / model["id"]
    assert not store_dir.exists() or not any(store_dir.iterdir())  # no second copy
    download = await client.get(f"/models/{model['id']}/download", headers=admin_headers)
    assert download.status_code == 200 and download.content == path.read_bytes()

    # The file changes after import: the next download is refused, saying why.
    path.write_bytes(path.read_bytes() + b"\x00")
    r = await client.get(f"/models/{model['id']}/download", headers=admin_headers)
    _assert_refused(r, 409, "model_changed")
    assert r.json()["details"]["recorded_sha256"] == model["sha256"]

    # Deleting the model removes the record, never the user's file.
    assert (await client.delete(f"/models/{model['id']}", headers=admin_headers)).status_code == 200
    assert path.is_file()
    await _nothing_registered(client, admin_headers)


async def test_a_session_on_a_changed_import_fails_clearly(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, tmp_path: Path
) -> None:
    path, arch = write_policy(tmp_path / "imports", {"obs_dim": 4, "act_dim": 2, "hidden": [8]})
    r = await client.post(
        "/models/import",
        headers=admin_headers,
        json={"path": str(path), "name": "policy", "architecture": json.loads(arch)},
    )
    assert r.status_code == 200, r.text
    model_id = r.json()["model_id"]
    path.write_bytes(path.read_bytes() + b"tampered")
    r = await client.post(
        "/optimize",
        headers=admin_headers,
        json={"model_id": model_id, "criteria_name": "balanced_optimization", "max_trials": 1},
    )
    assert r.status_code == 200, r.text
    status = await wait_terminal(client, admin_headers, r.json()["session_id"], timeout_s=60)
    assert status["status"] == "failed"
    assert "changed since they were imported" in (status.get("error") or ""), status


async def test_import_disabled_and_roles_from_settings(
    tmp_path: Path, db_url: str, make_user: MakeUser
) -> None:
    from api.main import create_app

    path = model_files.onnx_model(tmp_path / "imports" / "p.onnx")
    for role, overrides, status, error in (
        ("admin", {"model_import_dirs": []}, 403, "import_disabled"),
        (
            "user",
            {"model_import_dirs": [tmp_path / "imports"], "import_allowed_roles": ["admin", "user"]},
            200,
            None,
        ),
    ):
        app = create_app(make_settings(tmp_path / "data", db_url, **overrides))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                user = await make_user(role)
                r = await c.post("/models/import", headers=user, json={"path": str(path), "name": "p"})
                if error is None:
                    assert r.status_code == status, r.text
                    assert Path(r.json()["format_details"]["imported"]["path"]) == path.resolve()
                else:
                    _assert_refused(r, status, error)
    await asyncio.sleep(0)


async def test_a_directory_imports_by_its_tree_digest(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, tmp_path: Path
) -> None:
    from tests.hf_directories import save_bert

    directory = save_bert(tmp_path / "imports" / "bert")
    body = {"path": str(directory), "name": "bert dir"}
    r = await client.post("/models/import", headers=admin_headers, json=body)
    assert r.status_code == 200, r.text
    model = r.json()
    assert model["format"] == "hf_directory"
    assert model["format_details"]["imported"] == {"path": str(directory.resolve()), "digest": "sha256-tree"}
    # A file added to the directory changes its digest: the next use is refused.
    (directory / "notes.txt").write_text("added after import")
    r = await client.get(f"/models/{model['id']}/download", headers=admin_headers)
    _assert_refused(r, 409, "model_changed")
    assert (await client.delete(f"/models/{model['id']}", headers=admin_headers)).status_code == 200
    assert (directory / "config.json").is_file()

    # A symlink inside an allow-listed directory that points outside it is refused; nothing registered.
    (tmp_path / "secret.txt").write_text("outside")
    (directory / "notes.txt").unlink()
    (directory / "leak.txt").symlink_to(tmp_path / "secret.txt")
    r = await client.post("/models/import", headers=admin_headers, json=body)
    _assert_refused(r, 422, "validation_error")
    await _nothing_registered(client, admin_headers)
