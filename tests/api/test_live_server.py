"""The real server: `python -m api` under uvicorn, started by the `live_server` fixtures."""

from __future__ import annotations

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
