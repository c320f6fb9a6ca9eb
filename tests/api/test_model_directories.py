"""Model directories through the service: a transformers text encoder (BERT) and a vision model (ViT),
each as .zip and as .tar.gz: uploaded, described, downloaded back as the same files, optimized by a
session that completes; hostile archives and models that need code refused with nothing left."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from state.settings import Settings
from tests.api.session_helpers import wait_terminal
from tests.conftest import AuthHeaders, UploadModel, make_settings
from tests.hf_directories import IMAGE_SIZE, TEXT_VOCAB, directory_files, edit_json, pack, save_bert, save_vit

BODY = {
    "criteria_name": "balanced_optimization",
    "optimization_techniques": ["quantization", "pruning"],
    "benchmark_iterations": 5,
    "benchmark_warmup": 1,
    "max_trials": 3,
}


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    (tmp_path / "imports").mkdir()
    return make_settings(tmp_path / "data", db_url, max_upload_mb=4, model_import_dirs=[tmp_path / "imports"])


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {"bert": save_bert(root / "tiny-bert"), "vit": save_vit(root / "tiny-vit", shard_kb=100)}


def leftovers(settings: Settings) -> list[Path]:
    """Files under uploads/ and anything under the models' store (a refusal must leave neither)."""
    found = (
        [p for p in settings.uploads_dir.rglob("*") if p.is_file()] if settings.uploads_dir.exists() else []
    )
    models = settings.artifacts_dir / "models"
    return found + (list(models.iterdir()) if models.exists() else [])


async def _refused(
    r: httpx.Response,
    status: int,
    error: str,
    client: httpx.AsyncClient,
    headers: AuthHeaders,
    settings: Settings,
) -> dict[str, object]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message", "details"} and body["error"] == error, body
    assert leftovers(settings) == []
    assert (await client.get("/models", headers=headers)).json()["total"] == 0
    return body


EXPECTED_INPUTS = {
    "bert": [
        {"name": "input_ids", "shape": [None, None], "dtype": "int64", "low": 0.0, "high": float(TEXT_VOCAB)},
        {"name": "attention_mask", "shape": [None, None], "dtype": "int64", "low": 1.0, "high": 2.0},
    ],
    "vit": [
        {
            "name": "pixel_values",
            "shape": [None, 3, IMAGE_SIZE, IMAGE_SIZE],
            "dtype": "float32",
            "low": 0.0,
            "high": 1.0,
        }
    ],
}


@pytest.mark.parametrize("ext", [".zip", ".tar.gz"])
@pytest.mark.parametrize("which", ["bert", "vit"])
async def test_directory_upload_download_and_session(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    model_dirs: dict[str, Path],
    tmp_path: Path,
    settings: Settings,
    which: str,
    ext: str,
) -> None:
    source = model_dirs[which]
    archive = pack(source, tmp_path / f"{source.name}{ext}")
    r = await upload_model(admin_headers, archive, name=f"{which} directory")
    assert r.status_code == 200, r.text
    model = r.json()
    assert model["format"] == "hf_directory" and model["extension"] == ext
    assert model["input_spec"] == EXPECTED_INPUTS[which]
    details = model["format_details"]
    assert details["tensor_count"] and details["details"]["layout"] == "transformers"
    assert details["details"]["model_class"] == (
        "BertModel" if which == "bert" else "ViTForImageClassification"
    )
    assert details["details"]["weights"] == ("safetensors" if which == "bert" else "safetensors_sharded")
    assert details["archive"]["stripped_folder"] == source.name
    assert details["signature"]["source"] == "config"
    outputs = [o["name"] for o in details["outputs"]]
    assert outputs == (["last_hidden_state", "pooler_output"] if which == "bert" else ["logits"])
    files = directory_files(source)
    assert model["size_bytes"] == sum(len(b) for b in files.values())
    # The archive is gone: only its unpacked directory is kept.
    stored = [
        p
        for p in (settings.artifacts_dir / "models" / model["id"]).rglob("*")
        if p.is_file() and p.name not in ("model.manifest.json", "model.manifest.json.sha256")
    ]
    assert sorted(
        p.relative_to(settings.artifacts_dir / "models" / model["id"] / "model").as_posix() for p in stored
    ) == sorted(files)
    assert not any(settings.uploads_dir.iterdir())

    r = await client.get(f"/models/{model['id']}/download", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-tar"
    assert r.headers["content-disposition"] == f'attachment; filename="{source.name}.tar"'
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert got == {f"{source.name}/{name}": data for name, data in files.items()}

    r = await client.post("/optimize", headers=admin_headers, json={"model_id": model["id"], **BODY})
    assert r.status_code == 200, r.text
    status = await wait_terminal(client, admin_headers, r.json()["session_id"], timeout_s=300)
    assert status["status"] == "completed", status
    results = (await client.get(f"/sessions/{status['session_id']}/results", headers=admin_headers)).json()
    floor = results["optimization_summary"]["criteria"]["target_accuracy_threshold"]
    assert results["performance_improvements"]["accuracy_retained"]["optimized"] >= floor
    # The baseline profile ran on the directory model (its outputs, by name), and int8 kept the floor.
    assert results["optimization_summary"]["accuracy_output"] in outputs
    assert any(t["status"] == "accepted" for t in results["trials"]), results["trials"]
    selected = results["selected_version"]
    assert selected["source_format"] == "hf_directory"
    r = await client.get(selected["download_url"], headers=admin_headers)
    assert r.status_code == 200 and r.content, r.text


async def test_downloaded_tar_uploads_again(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    model_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    first = await upload_model(admin_headers, pack(model_dirs["bert"], tmp_path / "m.tgz"))
    assert first.status_code == 200, first.text
    r = await client.get(f"/models/{first.json()['id']}/download", headers=admin_headers)
    (tmp_path / "again.tar").write_bytes(r.content)
    again = await upload_model(admin_headers, tmp_path / "again.tar")
    assert again.status_code == 200, again.text
    assert again.json()["input_spec"] == first.json()["input_spec"]


async def test_evaluation_data_for_a_directory_model(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    model_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    r = await upload_model(admin_headers, pack(model_dirs["bert"], tmp_path / "m.zip"))
    model_id = r.json()["id"]
    rng = np.random.default_rng(0)
    good = tmp_path / "eval.npz"
    np.savez(
        good,
        input_ids=rng.integers(0, TEXT_VOCAB, size=(8, 12), dtype=np.int64),
        attention_mask=np.ones((8, 12), dtype=np.int64),
    )
    with open(good, "rb") as f:
        r = await client.post(
            f"/models/{model_id}/evaluation-data", headers=admin_headers, files={"file": ("eval.npz", f)}
        )
    assert r.status_code == 200, r.text
    assert r.json()["eval_data_info"]["num_samples"] == 8
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixel_values=np.zeros((2, 3, 8, 8), dtype=np.float32))
    with open(wrong, "rb") as f:
        r = await client.post(
            f"/models/{model_id}/evaluation-data", headers=admin_headers, files={"file": ("wrong.npz", f)}
        )
    assert r.status_code == 422 and r.json()["error"] == "data_mismatch", r.text


# ---------------------------------------------------------------------------------------------
# refusals


async def test_traversal_archive_is_refused_and_leaves_nothing(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    tmp_path: Path,
    settings: Settings,
) -> None:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/config.json", b"{}")
        zf.writestr("../../evil.sh", b"#!/bin/sh\n")
    body = await _refused(
        await upload_model(admin_headers, path), 422, "unsafe_model", client, admin_headers, settings
    )
    assert "'../../evil.sh'" in str(body["message"])
    assert not (settings.artifacts_dir.parent / "evil.sh").exists()


async def test_zip_bomb_is_refused_at_the_unpacked_size_cap(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    tmp_path: Path,
    settings: Settings,
) -> None:
    settings.max_unpacked_gb = 1.0
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("m/config.json", b"{}")
        zf.writestr("m/model.safetensors", b"\0" * (1 << 20))
        zf.infolist()[1].file_size = 10 * 1024**3  # 10 GiB declared in a 1 KB file
    assert path.stat().st_size < 2048
    body = await _refused(
        await upload_model(admin_headers, path), 422, "unsafe_model", client, admin_headers, settings
    )
    assert "more than 1 GiB" in str(body["message"])


async def test_too_many_members_are_refused(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    tmp_path: Path,
    settings: Settings,
) -> None:
    settings.max_archive_members = 10
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(11):
            zf.writestr(f"m/f{i}.json", b"{}")
    await _refused(
        await upload_model(admin_headers, path), 422, "unsafe_model", client, admin_headers, settings
    )


async def test_remote_code_directory_is_refused_and_nothing_runs(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    model_dirs: dict[str, Path],
    tmp_path: Path,
    settings: Settings,
) -> None:
    directory = tmp_path / "custom"
    directory.mkdir()
    for path in model_dirs["bert"].iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    marker = tmp_path / "ran"
    (directory / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    edit_json(
        directory / "config.json",
        architectures=["CustomModel"],
        auto_map={"AutoModel": "modeling_custom.CustomModel"},
    )
    r = await upload_model(admin_headers, pack(directory, tmp_path / "custom.tar.gz"))
    body = await _refused(r, 422, "unsafe_model", client, admin_headers, settings)
    assert "remote code" in str(body["message"]) and "never runs" in str(body["message"])
    assert not marker.exists()


async def test_archive_that_is_not_a_model_directory_is_refused(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    tmp_path: Path,
    settings: Settings,
) -> None:
    path = tmp_path / "photos.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("holiday/beach.txt", b"not a model")
    body = await _refused(
        await upload_model(admin_headers, path), 422, "invalid_model", client, admin_headers, settings
    )
    assert "config.json" in str(body["message"])
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b" + bytes(range(200)))
    await _refused(
        await upload_model(admin_headers, corrupt), 422, "invalid_model", client, admin_headers, settings
    )


async def test_input_signature_given_at_upload_names_the_model_arguments(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    upload_model: UploadModel,
    model_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    """token_type_ids is an argument of BertModel.forward: a signature may add it."""
    signature = [
        {"name": "input_ids", "shape": [None, 24], "dtype": "int64", "low": 0, "high": TEXT_VOCAB},
        {"name": "attention_mask", "shape": [None, 24], "dtype": "int64", "low": 1, "high": 2},
        {"name": "token_type_ids", "shape": [None, 24], "dtype": "int64", "low": 0, "high": 2},
    ]
    archive = pack(model_dirs["bert"], tmp_path / "m.zip")
    r = await upload_model(admin_headers, archive, input_signature=json.dumps(signature))
    assert r.status_code == 200, r.text
    assert [s["name"] for s in r.json()["input_spec"]] == ["input_ids", "attention_mask", "token_type_ids"]
    bad = [{"name": "pixel_values", "shape": [None, 3, 8, 8], "dtype": "float32"}]
    r = await upload_model(admin_headers, archive, input_signature=json.dumps(bad))
    assert r.status_code == 422 and r.json()["error"] == "data_mismatch", r.text


async def test_an_archive_is_not_imported_in_place(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Import registers without a copy; an archive would have to be unpacked (a copy): refused, and the
    unpacked directory imports."""
    imports = tmp_path / "imports"
    archive = pack(model_dirs["bert"], imports / "bert.zip")
    r = await client.post("/models/import", headers=admin_headers, json={"path": str(archive), "name": "b"})
    assert r.status_code == 422 and r.json()["error"] == "validation_error", r.text
    assert "unpack it on the server" in r.json()["details"]
    assert archive.is_file() and (await client.get("/models", headers=admin_headers)).json()["total"] == 0


async def test_tar_stream_stops_when_the_client_goes_away(tmp_path: Path) -> None:
    """The tar is built block by block while it is read; a reader that leaves stops the writer."""
    import asyncio
    import threading

    from api.archive_stream import BLOCK, QUEUE_BLOCKS, stream_directory_tar

    directory = tmp_path / "big"
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(b"\1" * (40 * BLOCK))
    stream = stream_directory_tar(directory, "big")
    first = await stream.__anext__()
    assert len(first) == BLOCK
    await asyncio.sleep(0.2)  # the writer fills the bounded queue, then waits
    await stream.aclose()
    for _ in range(40):
        if not any(t.name == "robopt-tar-stream" for t in threading.enumerate()):
            break
        await asyncio.sleep(0.1)
    assert not any(t.name == "robopt-tar-stream" for t in threading.enumerate())
    assert QUEUE_BLOCKS < 40  # so the writer could not have finished on its own
