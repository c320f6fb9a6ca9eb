"""A session version's folder, published by the worker that saved it, read back on another machine
(a resumed session's wrap-up, a rollback of a finished one in the API) through the artifact store."""

from __future__ import annotations

import json
from pathlib import Path

from agents.runner import _store_version, _version_files, _version_info, publish_version
from agents.workspace import ARTIFACT_INFO
from state.artifacts import ArtifactStore, sha256_file

SID, VID = "s" * 32, "v2"


def _stores(tmp_path: Path) -> tuple[ArtifactStore, ArtifactStore, Path]:
    shared = tmp_path / "shared"
    worker = ArtifactStore(tmp_path / "worker" / "artifacts", remote=str(shared), cache_dir=tmp_path / "wc")
    api = ArtifactStore(tmp_path / "api" / "artifacts", remote=str(shared), cache_dir=tmp_path / "ac")
    return worker, api, shared


def _saved_version(store: ArtifactStore) -> Path:
    """A folder as Workspace.save leaves it: a transformers directory, its ONNX form, artifact.json."""
    folder = store.root / SID / VID
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model" / "model.safetensors").write_bytes(b"\x07" * 4096)
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"onnx graph")
    (folder / ".tmp-model.pt").write_bytes(b"a half-written attempt")
    info = {
        "runtime": "transformers",
        "downloads": {"hf_directory": {"path": "model", "runtime": "transformers"}},
        "onnx": {"path": "onnx/model.onnx", "runtime": "onnxruntime"},
    }
    (folder / ARTIFACT_INFO).write_text(json.dumps(info))
    return folder


def test_a_version_saved_by_a_worker_is_registered_by_another_machine(tmp_path: Path) -> None:
    worker, api, shared = _stores(tmp_path)
    folder = _saved_version(worker)
    publish_version(worker, SID, VID, folder)
    assert not (shared / SID / VID / ".tmp-model.pt").exists()
    recorded = str(folder / "model")  # the checkpoint's artifact_path: the worker's own

    info = _version_info(api, SID, VID, recorded)
    found = _version_files(api, SID, VID, recorded, info)
    assert found is not None
    local, onnx_dir = found
    assert (
        local.is_relative_to(api.cache_dir) and (local / "model.safetensors").read_bytes() == b"\x07" * 4096
    )
    assert info["onnx"]["path"] == "onnx/model.onnx"
    assert onnx_dir is not None and (onnx_dir / "model.onnx").read_bytes() == b"onnx graph"

    # Registered by the API as a model of its own: in its tree and on the shared storage again.
    stored, details = _store_version(api, local, "hf_directory", "m" * 32, info, onnx_dir)
    assert stored == api.root / "models" / ("m" * 32) / "model"
    assert (shared / "models" / ("m" * 32) / "model.manifest.json").exists()
    assert (shared / "models" / ("m" * 32) / "onnx" / "model.onnx").read_bytes() == b"onnx graph"
    assert details["downloads"]["onnx"]["sha256"] == sha256_file(stored.parent / "onnx" / "model.onnx")


def test_a_version_that_is_nowhere_or_corrupted_is_not_registered(tmp_path: Path) -> None:
    worker, api, shared = _stores(tmp_path)
    folder = worker.root / SID / VID
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"torchscript")
    (folder / ARTIFACT_INFO).write_text("{}")
    recorded = str(folder / "model.pt")
    assert _version_files(api, SID, VID, recorded, {}) is None  # never published
    assert _version_info(api, SID, VID, recorded) == {}
    publish_version(worker, SID, VID, folder)
    found = _version_files(api, SID, VID, recorded, {})
    assert found is not None and found[0].read_bytes() == b"torchscript" and found[1] is None
    (shared / SID / VID / "model.pt").write_bytes(b"tampered")
    other = ArtifactStore(tmp_path / "third", remote=str(shared), cache_dir=tmp_path / "tc")
    assert _version_files(other, SID, VID, recorded, {}) is None
