"""`ArtifactStore.resolve`: a stored artifact by the path its writer recorded, on any machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from state.artifacts import ArtifactCorruptedError, ArtifactStore, sha256_file


def _stores(tmp_path: Path) -> tuple[ArtifactStore, ArtifactStore, Path]:
    """Two machines' stores (their own working trees and caches) over one shared storage."""
    shared = tmp_path / "shared"
    a = ArtifactStore(tmp_path / "a" / "artifacts", remote=str(shared), cache_dir=tmp_path / "a" / "cache")
    b = ArtifactStore(tmp_path / "b" / "artifacts", remote=str(shared), cache_dir=tmp_path / "b" / "cache")
    return a, b, shared


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_a_file_recorded_on_one_machine_resolves_on_another(tmp_path: Path) -> None:
    a, b, _ = _stores(tmp_path)
    destination = a.directory("models", "m1") / "model.pt"
    destination.write_bytes(b"weights" * 1000)  # moved into place (an upload), then published
    stored = a.publish(destination, "models", "m1", "model.pt")
    recorded = str(destination.resolve())  # what the registry keeps: A's path

    assert a.resolve(recorded, "models", "m1") == destination  # A: its own working copy
    local = b.resolve(recorded, "models", "m1")  # B: A's root means nothing here
    assert local.is_relative_to(b.cache_dir) and local.read_bytes() == destination.read_bytes()
    assert sha256_file(local) == stored.sha256
    # A path relative to the store's root names the same artifact.
    assert b.resolve("models/m1/model.pt") == local


def test_a_directory_and_a_file_inside_it_resolve_on_another_machine(tmp_path: Path) -> None:
    a, b, _ = _stores(tmp_path)
    folder = a.directory("models", "m2") / "model"
    (folder / "shards").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "shards" / "part-1.safetensors").write_bytes(b"\x01" * 5000)
    a.publish_tree(folder, "models", "m2", "model")

    local = b.resolve(folder, "models", "m2")
    assert local.is_relative_to(b.cache_dir) and _tree(local) == _tree(folder)
    inner = b.resolve(folder / "shards" / "part-1.safetensors", "models", "m2")
    assert inner == local / "shards" / "part-1.safetensors"
    assert a.resolve(folder, "models", "m2") == folder  # verified against its manifest locally


def test_corrupted_bytes_are_refused_wherever_they_are(tmp_path: Path) -> None:
    a, b, shared = _stores(tmp_path)
    file = a.directory("models", "m3") / "model.onnx"
    file.write_bytes(b"graph" * 100)
    a.publish(file, "models", "m3", "model.onnx")
    folder = a.directory("models", "m3") / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x02" * 100)
    a.publish_tree(folder, "models", "m3", "model")

    (shared / "models" / "m3" / "model.onnx").write_bytes(b"other bytes")
    with pytest.raises(ArtifactCorruptedError, match="corrupted"):
        b.resolve(file, "models", "m3")
    (shared / "models" / "m3" / "model" / "weights.bin").write_bytes(b"\x03" * 100)
    with pytest.raises(ArtifactCorruptedError, match="corrupted"):
        b.resolve(folder, "models", "m3")
    assert not [p for p in b.cache_dir.rglob("*") if p.is_file()]  # nothing half-verified kept

    file.write_bytes(b"bit rot")  # the local working copy itself
    with pytest.raises(ArtifactCorruptedError):
        a.resolve(file, "models", "m3")
    (folder / "weights.bin").write_bytes(b"rot")
    with pytest.raises(ArtifactCorruptedError):
        a.resolve(folder, "models", "m3")


def test_older_rows_imports_and_missing_artifacts(tmp_path: Path) -> None:
    a, b, _ = _stores(tmp_path)
    legacy = a.directory("models", "old") / "model.pt"
    legacy.write_bytes(b"stored before checksums were recorded")
    assert a.resolve(legacy, "models", "old") == legacy  # kept working, as it is
    with pytest.raises(FileNotFoundError):
        b.resolve(legacy, "models", "old")  # it was never published

    imported = tmp_path / "server-models" / "policy.pt"
    imported.parent.mkdir()
    imported.write_bytes(b"an imported model's own file")
    assert b.resolve(imported, "models", "imp") == imported  # outside the store: its own path
    with pytest.raises(FileNotFoundError):
        b.resolve(tmp_path / "nowhere.pt", "models", "imp")

    local_only = ArtifactStore(tmp_path / "solo")
    with pytest.raises(FileNotFoundError):
        local_only.resolve(local_only.root / "models" / "m9" / "model.pt")
