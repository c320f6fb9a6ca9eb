"""ARTIFACT_STORE on an S3-compatible server (moto's) shared by two API replicas with their own
DATA_DIRs: a model uploaded through A is optimized by B's worker process, which has none of A's
files, and the optimized model B's worker produced downloads through A, checksum intact. A corrupted
object on the shared storage is refused (ArtifactCorruptedError), as a download error and as a
session failure that say so.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.session_helpers import write_policy
from tests.api.test_replicas import QUICK, SMALL, _login
from tests.conftest import LiveServer, LiveServerFactory

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BUCKET, PREFIX = "robopt", "shared"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A real S3 HTTP API on 127.0.0.1 (moto's server, a thread of this process) with one bucket."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
    pytest.importorskip("s3fs")
    import boto3

    for name, value in AWS.items():
        monkeypatch.setenv(name, value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield {"endpoint": endpoint, "client": client}
    finally:
        server.stop()


@pytest.fixture
def replicas(
    postgres_database_url: str, live_server_factory: LiveServerFactory, tmp_path: Path, s3: dict[str, Any]
) -> tuple[LiveServer, LiveServer]:
    from tests.conftest import _truncate_postgres

    _truncate_postgres(postgres_database_url)
    env = {
        **AWS,
        "DATABASE_URL": postgres_database_url,
        "JWT_SECRET_KEY": "replica-test-secret-" + "x" * 32,
        "ARTIFACT_STORE": f"s3://{BUCKET}/{PREFIX}",
        "S3_ENDPOINT_URL": s3["endpoint"],
        "EXECUTOR": "process",
    }
    return (
        live_server_factory(env=env, data_dir=tmp_path / "a"),
        live_server_factory(env=env, data_dir=tmp_path / "b"),
    )


def _upload(base: str, headers: dict[str, str], directory: Path, config: dict[str, Any] = SMALL) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path, arch = write_policy(directory, config)
    with open(path, "rb") as f:
        r = httpx.post(
            f"{base}/models/upload",
            headers=headers,
            files={"file": ("policy.pt", f, "application/octet-stream")},
            data={"name": "policy", "architecture": arch},
            timeout=60,
        )
    assert r.status_code == 200, r.text
    return str(r.json()["model_id"])


def _run(base: str, headers: dict[str, str], model_id: str, timeout_s: float = 90) -> dict[str, Any]:
    r = httpx.post(
        f"{base}/optimize",
        headers=headers,
        json={"model_id": model_id, "planner": "rules", **QUICK},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    session_id = r.json()["session_id"]
    deadline = time.monotonic() + timeout_s
    while True:
        body = httpx.get(f"{base}/sessions/{session_id}/status", headers=headers, timeout=10).json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return dict(body)
        assert time.monotonic() < deadline, f"session still {body['status']}"
        time.sleep(0.3)


def _object(s3: dict[str, Any], key: str) -> bytes:
    return bytes(s3["client"].get_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}")["Body"].read())


def test_a_worker_with_another_working_tree_reads_and_writes_through_shared_storage(
    replicas: tuple[LiveServer, LiveServer], s3: dict[str, Any], tmp_path: Path
) -> None:
    a, b = replicas
    headers_a, headers_b = _login(a.base_url), _login(b.base_url)
    uploaded = _upload(a.base_url, headers_a, tmp_path)
    # The upload is on the shared storage, checksummed; B's working tree has nothing of it.
    original = _object(s3, f"models/{uploaded}/model.pt")
    assert _object(s3, f"models/{uploaded}/model.pt.sha256").decode() == hashlib.sha256(original).hexdigest()
    assert not (b.data_dir / "artifacts" / "models" / uploaded).exists()

    # Started through B: B's worker process (DATA_DIR b) loads the model from the shared storage.
    status = _run(b.base_url, headers_b, uploaded)
    assert status["status"] == "completed", status
    assert not (b.data_dir / "artifacts" / "models" / uploaded).exists()
    assert [p.read_bytes() for p in (b.data_dir / "artifact-cache").rglob("model.pt")] == [original]
    optimized = status["result_model_id"]
    assert optimized and optimized != uploaded, status

    # Downloaded through A, whose working tree never held it: fetched from the shared storage, verified.
    assert not (a.data_dir / "artifacts" / "models" / optimized).exists()
    r = httpx.get(f"{a.base_url}/models/{optimized}/download", headers=headers_a, timeout=60)
    assert r.status_code == 200, r.text
    digest = hashlib.sha256(r.content).hexdigest()
    assert r.headers["X-Content-SHA256"] == digest
    name = next(
        p.name
        for p in (b.data_dir / "artifacts" / "models" / optimized).iterdir()
        if p.name.startswith("model")
    )
    name = name.removesuffix(".sha256")
    assert (
        _object(s3, f"models/{optimized}/{name}")
        == r.content
        == (b.data_dir / "artifacts" / "models" / optimized / name).read_bytes()
    )
    assert _object(s3, f"models/{optimized}/{name}.sha256").decode() == digest

    # The object replaced on the shared storage (same checksum record): A, its cache gone, refuses it.
    s3["client"].put_object(Bucket=BUCKET, Key=f"{PREFIX}/models/{optimized}/{name}", Body=b"not a model")
    shutil.rmtree(a.data_dir / "artifact-cache")
    r = httpx.get(f"{a.base_url}/models/{optimized}/download", headers=headers_a, timeout=60)
    assert r.status_code == 500, r.text
    error = r.json()
    assert error["error"] == "artifact_corrupted" and "corrupted" in error["message"], error
    assert digest in error["details"]  # the checksum that was recorded

    # A corrupted upload is refused by the worker: the session fails and says why.
    # (Another model: the same bytes would be read from B's cache, under their checksum, not the bucket.)
    second = _upload(a.base_url, headers_a, tmp_path / "second", {**SMALL, "hidden": [32]})
    s3["client"].put_object(Bucket=BUCKET, Key=f"{PREFIX}/models/{second}/model.pt", Body=b"garbage")
    status = _run(b.base_url, headers_b, second, timeout_s=60)
    assert status["status"] == "failed", status
    assert "corrupted" in status["error"] and "refusing to use it" in status["error"], status["error"]
