"""The real server: `python -m api` under uvicorn, started by the `live_server` fixtures."""

from __future__ import annotations

import socket
import time

import httpx

from tests.conftest import ADMIN_PASSWORD, LiveServerFactory


def test_live_server_serves_and_logs_request_ids(live_server_factory: LiveServerFactory) -> None:
    server = live_server_factory()
    r = httpx.get(f"{server.base_url}/health", headers={"X-Request-ID": "probe-123"}, timeout=10)
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "probe-123"
    token = httpx.post(
        f"{server.base_url}/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}, timeout=10
    ).json()["access_token"]

    # The log line of that request carries its id (the access line is written inside the request).
    log = server.log_tail(20000)
    assert "[probe-123] robopt.access: GET /health 200" in log
    # The generated secret is private to the owner.
    assert (server.data_dir / ".jwt_secret").stat().st_mode & 0o777 == 0o600

    me = httpx.get(f"{server.base_url}/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert me.status_code == 200 and me.json()["username"] == "admin"

    # A client that disconnects halfway through an upload leaves nothing behind: the partial file
    # exists while bytes arrive (the body streams to disk) and is gone once the connection drops.
    uploads = server.data_dir / "uploads"
    boundary = "cut"
    preamble = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.onnx"\r\n\r\n'
    ).encode()
    declared = len(preamble) + 50 * 1024 * 1024
    head = (
        f"POST /models/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + preamble)
        for _ in range(8):
            sock.sendall(b"\x01" * (1024 * 1024))
        assert _wait_until(lambda: any(uploads.glob(".upload-*"))), "no partial file while streaming"
    assert _wait_until(lambda: not any(uploads.iterdir())), list(uploads.iterdir())
    assert "client disconnected during an upload" in server.log_tail(20000)


def _wait_until(condition, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
