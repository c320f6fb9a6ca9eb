"""Resumable uploads (tus 1.0) under /uploads, and POST /models/from-upload."""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from api.resumable import remove_expired_uploads
from state.settings import Settings
from state.uploads import ResumableUpload
from state.users import utcnow
from tests.api import model_files
from tests.conftest import ADMIN_PASSWORD, AuthHeaders, LiveServerFactory, MakeUser, make_settings

TUS = {"Tus-Resumable": "1.0.0"}
MiB = 1024 * 1024
CHUNK_TYPE = {"Content-Type": "application/offset+octet-stream"}


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    # 1 MiB per upload, 2 MiB per user: the limits are reachable with small bodies.
    return make_settings(
        tmp_path / "data", db_url, max_resumable_upload_gb=1 / 1024, user_storage_quota_gb=2 / 1024
    )


def _metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


async def _create(
    client: httpx.AsyncClient, headers: dict[str, str], length: int, filename: str = "policy.onnx"
) -> httpx.Response:
    return await client.post(
        "/uploads",
        headers={
            **headers,
            **TUS,
            "Upload-Length": str(length),
            "Upload-Metadata": _metadata(filename=filename),
        },
    )


def _upload_id(created: httpx.Response) -> str:
    assert created.status_code == 201, created.text
    return created.headers["location"].rstrip("/").rsplit("/", 1)[-1]


async def _patch(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    upload_id: str,
    offset: int,
    data: bytes,
    checksum: str | None = None,
) -> httpx.Response:
    extra = {"Upload-Checksum": checksum} if checksum else {}
    return await client.patch(
        f"/uploads/{upload_id}",
        headers={**headers, **TUS, **CHUNK_TYPE, "Upload-Offset": str(offset), **extra},
        content=data,
    )


def _sha256_header(data: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()


def _files(settings: Settings) -> list[Path]:
    root = settings.resumable_uploads_dir
    return sorted(root.iterdir()) if root.is_dir() else []


def _assert_error(r: httpx.Response, status: int, error: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message", "details"} and body["error"] == error, body
    if r.request.url.path.startswith("/uploads"):
        assert r.headers["tus-resumable"] == "1.0.0"


async def test_capabilities_and_the_version_header(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, settings: Settings
) -> None:
    r = await client.options("/uploads", headers=admin_headers)
    assert r.status_code == 204
    assert r.headers["tus-version"] == "1.0.0" and r.headers["tus-resumable"] == "1.0.0"
    assert set(r.headers["tus-extension"].split(",")) >= {"creation", "termination", "checksum"}
    assert r.headers["tus-max-size"] == str(settings.max_resumable_upload_bytes)
    assert "sha256" in r.headers["tus-checksum-algorithm"].split(",")

    # Without a token: 401 in the spec's body, still a tus response.
    _assert_error(await client.post("/uploads", headers={**TUS, "Upload-Length": "3"}), 401, "unauthorized")
    _assert_error(await client.options("/uploads"), 401, "unauthorized")
    # Without Tus-Resumable: 412 naming the version spoken.
    r = await client.post("/uploads", headers={**admin_headers, "Upload-Length": "3"})
    _assert_error(r, 412, "unsupported_tus_version")
    assert r.headers["tus-version"] == "1.0.0"


async def test_upload_in_chunks_then_register_the_model(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, settings: Settings, tmp_path: Path
) -> None:
    data = model_files.onnx_model(tmp_path / "policy.onnx").read_bytes()
    created = await _create(client, admin_headers, len(data))
    upload_id = _upload_id(created)
    assert "upload-expires" in created.headers
    assert (settings.resumable_uploads_dir / f"{upload_id}.onnx").is_file()

    head = await client.head(f"/uploads/{upload_id}", headers={**admin_headers, **TUS})
    assert head.status_code == 200 and head.headers["upload-offset"] == "0"
    assert head.headers["upload-length"] == str(len(data)) and head.headers["cache-control"] == "no-store"
    assert head.headers["upload-metadata"] == _metadata(filename="policy.onnx")

    half = len(data) // 2
    r = await _patch(client, admin_headers, upload_id, 0, data[:half])  # no checksum
    assert r.status_code == 204 and r.headers["upload-offset"] == str(half), r.text
    assert r.headers["tus-resumable"] == "1.0.0" and "upload-expires" in r.headers

    # The offset the client claims must be the server's: 409 otherwise, nothing written.
    _assert_error(await _patch(client, admin_headers, upload_id, 0, data[:half]), 409, "offset_mismatch")
    # Wrong media type: 415.
    r = await client.patch(
        f"/uploads/{upload_id}",
        headers={**admin_headers, **TUS, "Content-Type": "application/json", "Upload-Offset": str(half)},
        content=data[half:],
    )
    _assert_error(r, 415, "unsupported_media_type")
    # A checksum that does not match the chunk: 460, the chunk discarded.
    r = await _patch(client, admin_headers, upload_id, half, data[half:], _sha256_header(b"other bytes"))
    _assert_error(r, 460, "checksum_mismatch")
    head = await client.head(f"/uploads/{upload_id}", headers={**admin_headers, **TUS})
    assert head.headers["upload-offset"] == str(half)
    assert (settings.resumable_uploads_dir / f"{upload_id}.onnx").stat().st_size == half
    # An unknown algorithm is refused before any byte is read.
    r = await _patch(client, admin_headers, upload_id, half, data[half:], "md5 AAAA")
    _assert_error(r, 400, "unsupported_checksum")
    # Past Upload-Length: 413.
    _assert_error(
        await _patch(client, admin_headers, upload_id, half, data[half:] + b"x"), 413, "payload_too_large"
    )

    # Registering before the last byte: 409.
    body = {"upload_id": upload_id, "name": "tus policy", "description": "came by tus"}
    _assert_error(
        await client.post("/models/from-upload", headers=admin_headers, json=body), 409, "upload_incomplete"
    )

    r = await _patch(client, admin_headers, upload_id, half, data[half:], _sha256_header(data[half:]))
    assert r.status_code == 204 and r.headers["upload-offset"] == str(len(data)), r.text
    head = await client.head(f"/uploads/{upload_id}", headers={**admin_headers, **TUS})
    assert head.headers["upload-offset"] == str(len(data)) and "upload-expires" not in head.headers

    r = await client.post("/models/from-upload", headers=admin_headers, json=body)
    assert r.status_code == 200, r.text
    model = r.json()
    assert model["format"] == "onnx" and model["name"] == "tus policy"
    assert model["sha256"] == hashlib.sha256(data).hexdigest() and model["size_bytes"] == len(data)
    assert model["original_filename"] == "policy.onnx"
    assert model["input_spec"][0]["name"] == "obs"  # probed like a multipart upload: a session can use it
    # Moved, not copied: the upload and its file are gone, the model's file holds the bytes.
    assert _files(settings) == []
    assert (await client.head(f"/uploads/{upload_id}", headers={**admin_headers, **TUS})).status_code == 404
    download = await client.get(f"/models/{model['id']}/download", headers=admin_headers)
    assert download.status_code == 200 and download.content == data
    # A second registration of the same upload finds nothing.
    _assert_error(
        await client.post("/models/from-upload", headers=admin_headers, json=body), 404, "not_found"
    )


async def test_refused_content_removes_the_upload(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, settings: Settings
) -> None:
    data = b"this is not an onnx graph" * 10
    upload_id = _upload_id(await _create(client, admin_headers, len(data)))
    assert (await _patch(client, admin_headers, upload_id, 0, data)).status_code == 204
    r = await client.post(
        "/models/from-upload", headers=admin_headers, json={"upload_id": upload_id, "name": "x"}
    )
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"error", "message", "details"}
    assert _files(settings) == []
    assert (await client.head(f"/uploads/{upload_id}", headers={**admin_headers, **TUS})).status_code == 404
    assert (await client.get("/models", headers=admin_headers)).json()["total"] == 0


async def test_creation_refusals(client: httpx.AsyncClient, make_user: MakeUser, settings: Settings) -> None:
    user = await make_user("user")
    # Over MAX_RESUMABLE_UPLOAD_GB: 413 at creation.
    r = await _create(client, user, settings.max_resumable_upload_bytes + 1)
    _assert_error(r, 413, "payload_too_large")
    assert r.json()["details"]["max_bytes"] == settings.max_resumable_upload_bytes
    # An extension no model upload accepts, or no filename at all: refused before any byte is sent.
    _assert_error(await _create(client, user, 10, "notes.exe"), 400, "unsupported_format")
    r = await client.post("/uploads", headers={**user, **TUS, "Upload-Length": "10"})
    _assert_error(r, 400, "bad_request")
    r = await client.post(
        "/uploads", headers={**user, **TUS, "Upload-Length": "10", "Upload-Metadata": "filename not-base64!"}
    )
    _assert_error(r, 400, "bad_request")
    _assert_error(
        await client.post("/uploads", headers={**user, **TUS, "Upload-Length": "-1"}), 400, "bad_request"
    )

    # The quota counts the declared lengths of unfinished uploads: two of 1 MiB fill 2 MiB.
    for _ in range(2):
        _upload_id(await _create(client, user, MiB))
    r = await _create(client, user, 1)
    _assert_error(r, 413, "quota_exceeded")
    assert r.json()["details"] == {
        "quota_bytes": settings.user_storage_quota_bytes,
        "used_bytes": 2 * MiB,
        "declared_bytes": 1,
    }
    assert len(_files(settings)) == 2


async def test_termination_and_owner_scoping(
    client: httpx.AsyncClient, make_user: MakeUser, admin_headers: AuthHeaders, settings: Settings
) -> None:
    alice, bob = await make_user("user"), await make_user("user")
    upload_id = _upload_id(await _create(client, alice, 100))
    assert (await _patch(client, alice, upload_id, 0, b"x" * 40)).status_code == 204
    # Another user, administrators included, sees nothing: 404 for every verb.
    for other in (bob, admin_headers):
        _assert_error(
            await client.delete(f"/uploads/{upload_id}", headers={**other, **TUS}), 404, "not_found"
        )
        _assert_error(await _patch(client, other, upload_id, 40, b"y"), 404, "not_found")
        r = await client.post(
            "/models/from-upload", headers=other, json={"upload_id": upload_id, "name": "x"}
        )
        assert r.status_code == 404, r.text
    r = await client.head(f"/uploads/{upload_id}", headers={**bob, **TUS})
    assert r.status_code == 404
    assert (await client.head(f"/uploads/{upload_id}", headers={**alice, **TUS})).headers[
        "upload-offset"
    ] == "40"

    r = await client.delete(f"/uploads/{upload_id}", headers={**alice, **TUS})
    assert r.status_code == 204 and r.headers["tus-resumable"] == "1.0.0"
    assert _files(settings) == []
    assert (await client.head(f"/uploads/{upload_id}", headers={**alice, **TUS})).status_code == 404


async def test_expired_uploads_answer_410_and_are_swept(
    client: httpx.AsyncClient, app: FastAPI, admin_headers: AuthHeaders, settings: Settings
) -> None:
    first = _upload_id(await _create(client, admin_headers, 10))
    second = _upload_id(await _create(client, admin_headers, 10))
    kept = _upload_id(await _create(client, admin_headers, 10))
    async with app.state.sessionmaker() as db:
        for upload_id in (first, second):
            row = await db.get(ResumableUpload, upload_id)
            assert row is not None
            row.expires_at = utcnow() - timedelta(seconds=1)
            db.add(row)
        await db.commit()
    r = await client.head(f"/uploads/{first}", headers={**admin_headers, **TUS})
    assert r.status_code == 410 and r.headers["tus-resumable"] == "1.0.0"
    assert (await client.head(f"/uploads/{first}", headers={**admin_headers, **TUS})).status_code == 404
    # The periodic sweep removes the other expired one, row and file, and keeps the live one.
    assert await remove_expired_uploads(app.state.sessionmaker, settings) == 1
    assert [p.name for p in _files(settings)] == [f"{kept}.onnx"]
    async with app.state.sessionmaker() as db:
        assert (
            await db.get(ResumableUpload, second) is None and await db.get(ResumableUpload, kept) is not None
        )


def test_tuspy_client_against_a_live_server(live_server_factory: LiveServerFactory, tmp_path: Path) -> None:
    from tusclient import client as tus_client

    server = live_server_factory()
    token = httpx.post(
        f"{server.base_url}/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}, timeout=10
    ).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    path = model_files.torchscript_model(tmp_path / "policy.pt")
    tus = tus_client.TusClient(f"{server.base_url}/uploads", headers=auth)
    # tuspy as it ships: small chunks and its default checksum (sha1).
    uploader = tus.uploader(
        str(path), chunk_size=1024, metadata={"filename": "policy.pt"}, upload_checksum=True
    )
    uploader.upload()
    assert uploader.offset == path.stat().st_size
    upload_id = uploader.url.rsplit("/", 1)[-1]
    r = httpx.post(
        f"{server.base_url}/models/from-upload",
        headers=auth,
        json={"upload_id": upload_id, "name": "tuspy policy"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["format"] == "torchscript"
    assert r.json()["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_tus_benchmark_at_a_small_size() -> None:
    """bench/tus_upload.py end to end at 64 MiB: two dropped connections, resumed, digest equal."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    done = subprocess.run(
        [sys.executable, "tus_upload.py", "--size-gb", "0.0625", "--chunk-mb", "8"],
        cwd=REPO_ROOT / "bench",
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "connections dropped:  2" in done.stdout and "sha256 matches:       True" in done.stdout


async def test_one_writer_at_a_time(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, settings: Settings
) -> None:
    import fcntl
    import os

    upload_id = _upload_id(await _create(client, admin_headers, 10))
    fd = os.open(settings.resumable_uploads_dir / f"{upload_id}.onnx", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a PATCH in progress (in any worker) holds it
        _assert_error(await _patch(client, admin_headers, upload_id, 0, b"abc"), 423, "locked")
    finally:
        os.close(fd)
    r = await _patch(client, admin_headers, upload_id, 0, b"abc")
    assert r.status_code == 204 and r.headers["upload-offset"] == "3"


async def test_cors_lets_a_browser_tus_client_through(tmp_path: Path, db_url: str) -> None:
    from api.main import create_app

    app = create_app(make_settings(tmp_path / "data", db_url, cors_origins=["https://ui.example"]))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.options(
                "/uploads/abc",
                headers={
                    "Origin": "https://ui.example",
                    "Access-Control-Request-Method": "PATCH",
                    "Access-Control-Request-Headers": "authorization, tus-resumable, upload-offset, "
                    "upload-checksum",
                },
            )
            assert r.status_code == 200, r.text
            allowed = r.headers["access-control-allow-headers"].lower()
            assert {"tus-resumable", "upload-offset", "upload-checksum"} <= {
                h.strip() for h in allowed.split(",")
            }
            r = await c.head("/uploads/abc", headers={"Origin": "https://ui.example", **TUS})
            exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
            assert {"location", "upload-offset", "upload-length", "tus-resumable"} <= exposed
