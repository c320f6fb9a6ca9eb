"""The artifact store: atomic writes with sha256 recorded and checked on read, locally, in a shared
directory, and on a real S3 HTTP server (moto's, on a free local port) through fsspec/s3fs."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from state.artifacts import ArtifactCorruptedError, ArtifactStore, sha256_file, store_from_settings
from tests.conftest import make_settings


def _model_file(directory: Path) -> Path:
    torch.manual_seed(0)
    path = directory / "policy.pt"
    torch.save(
        torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).state_dict(),
        path,
    )
    return path


def test_local_put_records_the_checksum_and_a_corrupted_file_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    source = _model_file(tmp_path)
    stored = store.put(source, "models", "m1", "model.pt")
    assert stored.sha256 == sha256_file(source) and stored.size_bytes == source.stat().st_size
    assert store.recorded_checksum(stored.path) == stored.sha256
    assert store.local_copy("models", "m1", "model.pt") == stored.path
    assert not [p for p in stored.path.parent.iterdir() if p.name.startswith(".tmp-")]  # no temp left
    # One flipped byte: a clear error, never a model loaded from wrong bytes.
    data = bytearray(stored.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.path.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptedError, match="corrupted"):
        store.local_copy("models", "m1", "model.pt")


def test_a_failed_write_leaves_nothing_under_the_final_name(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    destination = store.directory("models", "m2") / "model.pt"
    with pytest.raises(RuntimeError), store.atomic_path(destination) as tmp:
        tmp.write_bytes(b"half a model")
        raise RuntimeError("crash mid-write")
    assert list(destination.parent.iterdir()) == []


def test_a_shared_directory_store_serves_every_replica(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    a = store_from_settings(make_settings(tmp_path / "a", None, artifact_store=str(shared)))
    b = store_from_settings(make_settings(tmp_path / "b", None, artifact_store=str(shared)))
    stored = a.put(_model_file(tmp_path), "models", "m3", "model.pt")
    path = b.local_copy("models", "m3", "model.pt")
    assert sha256_file(path) == stored.sha256
    torch.load(path, weights_only=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A real S3 HTTP API on 127.0.0.1 (moto's server) with one bucket."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
    pytest.importorskip("s3fs")
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="robopt")
    try:
        yield {"endpoint": endpoint, "client": client}
    finally:
        server.stop()


def _s3_store(tmp_path: Path, name: str, endpoint: str) -> ArtifactStore:
    settings = make_settings(
        tmp_path / name, None, artifact_store="s3://robopt/artifacts", s3_endpoint_url=endpoint
    )
    store = store_from_settings(settings)
    store._fs.invalidate_cache()  # noqa: SLF001  # a fresh replica lists nothing from before
    return store


def test_s3_store_publishes_whole_objects_and_replicas_load_verified_copies(
    tmp_path: Path, s3: dict[str, Any]
) -> None:
    writer = _s3_store(tmp_path, "writer", s3["endpoint"])
    source = _model_file(tmp_path)
    stored = writer.put(source, "models", "m4", "model.pt")
    assert stored.remote_uri == "s3://robopt/artifacts/models/m4/model.pt"
    body = s3["client"].get_object(Bucket="robopt", Key="artifacts/models/m4/model.pt")["Body"].read()
    assert body == source.read_bytes()
    recorded = s3["client"].get_object(Bucket="robopt", Key="artifacts/models/m4/model.pt.sha256")
    assert recorded["Body"].read().decode() == stored.sha256

    # Another replica (its own DATA_DIR): a local copy under the checksum, loadable by torch.
    reader = _s3_store(tmp_path, "reader", s3["endpoint"])
    path = reader.local_copy("models", "m4", "model.pt")
    assert path.parent.name == stored.sha256 and sha256_file(path) == stored.sha256
    original = torch.load(source, weights_only=True)
    loaded = torch.load(path, weights_only=True)
    assert all(torch.equal(original[k], loaded[k]) for k in original)
    assert reader.local_copy("models", "m4", "model.pt") == path  # cached: no second download

    # The object replaced by other bytes under the same checksum record: refused.
    s3["client"].put_object(Bucket="robopt", Key="artifacts/models/m4/model.pt", Body=b"not the model")
    fresh = _s3_store(tmp_path, "fresh", s3["endpoint"])
    with pytest.raises(ArtifactCorruptedError, match="corrupted"):
        fresh.local_copy("models", "m4", "model.pt")
    assert not list((fresh.cache_dir / stored.sha256).glob("*"))  # nothing half-written kept

    writer.remove("models", "m4")
    listed = s3["client"].list_objects_v2(Bucket="robopt", Prefix="artifacts/models/m4/")
    assert listed.get("KeyCount", 0) == 0
