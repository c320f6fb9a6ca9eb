"""Per-user quotas and request limits: model count, storage, sessions, SSE streams, JSON body size,
chat message length, pagination caps. Each refusal is 429 or 413 in the error format, naming the limit."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from state.sessions import OptimizationSession
from state.settings import Settings
from tests.api.model_files import onnx_model
from tests.conftest import AuthHeaders, LiveServerFactory, MakeUser, UploadModel, make_settings
from tests.hardening.conftest import files_under, login, upload

ERROR_KEYS = {"error", "message", "details"}


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(
        tmp_path / "data",
        db_url,
        user_max_models=2,
        user_storage_quota_gb=2000 / 1024**3,  # 2000 bytes: two tiny ONNX graphs fit, a third does not
        user_max_queued_sessions=1,
        user_max_active_sessions=2,
        max_json_body_kb=4,
    )


def _assert_error(r: httpx.Response, status: int, error: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == ERROR_KEYS and body["error"] == error and body["message"], body
    return body


def _onnx_of_size(source: Path, path: Path, size: int) -> Path:
    """The source graph with a doc string that pads the file to exactly `size` bytes."""
    import onnx

    model = onnx.load(str(source))
    n = size - source.stat().st_size
    for _ in range(3):  # the length prefix of the doc string may take one more byte
        model.doc_string = "p" * n
        onnx.save(model, str(path))
        n += size - path.stat().st_size
    assert path.stat().st_size == size
    return path


async def test_model_count_and_storage_quotas(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    upload_model: UploadModel,
    settings: Settings,
    tmp_path: Path,
) -> None:
    user = await make_user()
    other = await make_user()
    small = onnx_model(tmp_path / "small.onnx")
    size = small.stat().st_size
    for _ in range(2):
        assert (await upload_model(user, small)).status_code == 200
    stored = files_under(settings.artifacts_dir)
    body = _assert_error(await upload_model(user, small), 429, "quota_exceeded")
    assert body["details"] == {"max_models": 2, "models": 2}
    assert files_under(settings.artifacts_dir) == stored and not any(settings.uploads_dir.glob(".upload-*"))

    # Another user's quota is their own. A file past their remaining storage is 413 and nothing is kept.
    assert (await upload_model(other, small)).status_code == 200
    left = 2000 - size
    padded = _onnx_of_size(small, tmp_path / "padded.onnx", left + 1)  # one byte more than is left
    stored = files_under(settings.artifacts_dir)
    body = _assert_error(await upload_model(other, padded), 413, "quota_exceeded")
    assert body["details"]["quota_bytes"] == settings.user_storage_quota_bytes == 2000
    assert body["details"]["used_bytes"] == size
    assert files_under(settings.artifacts_dir) == stored and not any(settings.uploads_dir.glob(".upload-*"))
    # Exactly what is left fits.
    _onnx_of_size(small, padded, left)
    assert (await upload_model(other, padded)).status_code == 200


async def test_session_quotas(
    client: httpx.AsyncClient, app, make_user: MakeUser, upload_model: UploadModel, tmp_path: Path
) -> None:
    user = await make_user()
    model_id = (await upload_model(user, onnx_model(tmp_path / "m.onnx"))).json()["model_id"]
    # Rows written straight to the database stand for sessions waiting for and holding executor slots.
    async with app.state.sessionmaker() as db:
        db.add(OptimizationSession(owner_id=user.user_id, model_id=model_id, status="queued", criteria={}))
        await db.commit()
    body = _assert_error(
        await client.post("/optimize", json={"model_id": model_id}, headers=user), 429, "quota_exceeded"
    )
    assert body["details"]["queued"] == 1 and body["details"]["max_queued_sessions"] == 1
    async with app.state.sessionmaker() as db:
        for _ in range(2):
            db.add(
                OptimizationSession(owner_id=user.user_id, model_id=model_id, status="running", criteria={})
            )
        row = (await db.exec(OptimizationSession.__table__.select())).first()  # type: ignore[attr-defined]
        queued = await db.get(OptimizationSession, row.id)
        queued.status = "completed"
        db.add(queued)
        await db.commit()
    body = _assert_error(
        await client.post("/optimize", json={"model_id": model_id}, headers=user), 429, "quota_exceeded"
    )
    assert body["details"]["active"] == 2 and "queued or running" in body["message"]


async def test_json_body_limit_on_every_json_endpoint(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, app
) -> None:
    big = {"model_id": "x" * 5000}
    json_routes = [
        (
            method.upper(),
            path.replace("{session_id}", "s").replace("{user_id}", "u").replace("{model_id}", "m"),
        )
        for path, ops in app.openapi()["paths"].items()
        for method, op in ops.items()
        if "application/json" in op.get("requestBody", {}).get("content", {}) and path != "/auth/login"
    ]  # login keeps its own, smaller limit (tests/api/test_auth.py)
    assert len(json_routes) >= 7
    for method, path in json_routes:
        r = await client.request(method, path, json=big, headers=admin_headers)
        body = _assert_error(r, 413, "payload_too_large")
        assert body["details"]["max_bytes"] == 4096, (method, path)

    # Without Content-Length (chunked), the body is counted as it is read and cut at the limit.
    async def chunks():
        for _ in range(4):
            yield b"x" * 1500

    r = await client.post(
        "/optimize", content=chunks(), headers={**admin_headers, "content-type": "application/json"}
    )
    _assert_error(r, 413, "payload_too_large")
    # A body under the limit goes through to the route as before.
    r = await client.post("/optimize", json={"model_id": "nope"}, headers=admin_headers)
    _assert_error(r, 404, "not_found")


async def test_chat_message_length_and_pagination_caps(
    client: httpx.AsyncClient, admin_headers: AuthHeaders
) -> None:
    too_long = await client.post(
        "/sessions/none/messages", json={"content": "m" * 2001}, headers=admin_headers
    )
    assert _assert_error(too_long, 422, "validation_error")["details"].startswith("content:")
    fits = await client.post("/sessions/none/messages", json={"content": "m" * 2000}, headers=admin_headers)
    _assert_error(fits, 404, "not_found")
    for path in ("/models", "/sessions"):
        _assert_error(
            await client.get(path, params={"limit": 101}, headers=admin_headers), 422, "validation_error"
        )
        assert (await client.get(path, params={"limit": 100}, headers=admin_headers)).status_code == 200


def test_sse_connections_per_user(live_server_factory: LiveServerFactory, tmp_path: Path) -> None:
    """A real server: past USER_MAX_SSE_CONNECTIONS the next stream is 429; a closed one frees its slot."""
    server = live_server_factory(env={"USER_MAX_SSE_CONNECTIONS": "1", "DEFAULT_TIME_BUDGET_S": "60"})
    headers = login(server.base_url)
    model_id = upload(server.base_url, headers, onnx_model(tmp_path / "m.onnx")).json()["model_id"]
    # A session that runs a few seconds: its stream stays open meanwhile.
    r = httpx.post(
        f"{server.base_url}/optimize",
        headers=headers,
        json={"model_id": model_id, "max_trials": 3, "benchmark_iterations": 2000},
        timeout=30,
    )
    session_id = r.json()["session_id"]
    raw = (
        f"GET /sessions/{session_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {headers['Authorization']}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    first = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    first.sendall(raw)
    assert first.recv(64).startswith(b"HTTP/1.1 200")
    second = httpx.get(f"{server.base_url}/sessions/{session_id}/events", headers=headers, timeout=10)
    body = _assert_error(second, 429, "quota_exceeded")
    assert body["details"] == {"max_sse_connections": 1, "open": 1}
    first.close()  # the server notices the disconnect and frees the slot
    deadline = time.monotonic() + 15
    while True:
        httpx.post(f"{server.base_url}/sessions/{session_id}/cancel", headers=headers, timeout=10)
        with httpx.stream(
            "GET", f"{server.base_url}/sessions/{session_id}/events", headers=headers, timeout=30
        ) as again:
            if again.status_code == 200:
                break
        assert time.monotonic() < deadline, "the closed stream's slot was never freed"
        time.sleep(0.3)
