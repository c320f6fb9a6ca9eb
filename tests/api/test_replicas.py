"""Two API replicas (real uvicorn servers) on one PostgreSQL: a session started through one streams
all its events, in order, through the other; a logout, a disable and a role change made through one
take effect on the other at once (LISTEN/NOTIFY, state/event_bus.py).

The replicas re-read the event log only every 60 s on their own (EVENT_REREAD_S), so a stream that
keeps up with the session can only have been woken by the bus.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.session_helpers import parse_sse, write_policy
from tests.conftest import ADMIN_PASSWORD, USER_PASSWORD, LiveServer, LiveServerFactory

pytestmark = pytest.mark.postgres

QUICK = {"criteria_name": "balanced_optimization", "max_trials": 2, "benchmark_iterations": 20}
SMALL = {"obs_dim": 16, "act_dim": 4, "hidden": [64, 64]}


@pytest.fixture
def replicas(
    postgres_database_url: str, live_server_factory: LiveServerFactory, tmp_path: Path
) -> tuple[LiveServer, LiveServer]:
    from tests.conftest import _truncate_postgres

    _truncate_postgres(postgres_database_url)
    env = {
        "DATABASE_URL": postgres_database_url,
        "JWT_SECRET_KEY": "replica-test-secret-" + "x" * 32,
        "EVENT_REREAD_S": "60",
        "AUTH_CACHE_TTL_S": "300",  # only the bus can end a cached entry within the test
    }
    a = live_server_factory(env=env, data_dir=tmp_path / "a")
    b = live_server_factory(env=env, data_dir=tmp_path / "b")
    return a, b


def _login(base: str, username: str = "admin", password: str = ADMIN_PASSWORD) -> dict[str, str]:
    r = httpx.post(f"{base}/auth/login", json={"username": username, "password": password}, timeout=30)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def start_session(base: str, headers: dict[str, str], directory: Path) -> str:
    """Upload the small policy through `base` and start a QUICK rules session on it: its id."""
    path, arch = write_policy(directory, SMALL)
    with open(path, "rb") as f:
        r = httpx.post(
            f"{base}/models/upload",
            headers=headers,
            files={"file": ("policy.pt", f, "application/octet-stream")},
            data={"name": "policy", "architecture": arch},
            timeout=60,
        )
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{base}/optimize",
        headers=headers,
        json={"model_id": r.json()["model_id"], "planner": "rules", **QUICK},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["session_id"])


def _stream(base: str, headers: dict[str, str], session_id: str, timeout_s: float) -> list[dict[str, Any]]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    with httpx.stream(
        "GET", f"{base}/sessions/{session_id}/events", headers=headers, timeout=httpx.Timeout(timeout_s)
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            lines.append(line)
            assert time.monotonic() < deadline, "the stream fell behind the session"
    return parse_sse(lines)


def test_a_session_started_on_one_replica_streams_through_the_other(
    replicas: tuple[LiveServer, LiveServer], tmp_path: Path
) -> None:
    a, b = replicas
    headers = _login(a.base_url)
    session_id = start_session(a.base_url, headers, tmp_path)

    # Followed live through B (its own login: the token works on every replica).
    started = time.monotonic()
    through_b = _stream(b.base_url, _login(b.base_url), session_id, timeout_s=50)
    took = time.monotonic() - started
    seqs = [int(e["id"]) for e in through_b]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # all of them, in order, none twice
    assert through_b[-1]["event"] == "end" and len(seqs) > 5
    assert took < 50  # every event after the first read came by NOTIFY, not the 60 s re-read

    # The same log replayed through A afterwards: identical, so nothing was lost or invented.
    through_a = _stream(a.base_url, headers, session_id, timeout_s=30)
    assert [(e["id"], e["event"], e["data"]) for e in through_a] == [
        (e["id"], e["event"], e["data"]) for e in through_b
    ]
    # Last-Event-ID replay through B is unchanged: exactly what came after.
    tail = _stream(b.base_url, {**headers, "Last-Event-ID": str(seqs[-3])}, session_id, timeout_s=30)
    assert [int(e["id"]) for e in tail] == seqs[-2:]


def _refused_on(base: str, headers: dict[str, str], path: str, status: int, within_s: float = 2.0) -> float:
    """Seconds until `path` answers `status` on `base` (asserts it does within `within_s`)."""
    started = time.monotonic()
    while True:
        r = httpx.get(f"{base}{path}", headers=headers, timeout=10)
        if r.status_code == status:
            return time.monotonic() - started
        assert time.monotonic() - started < within_s, f"{path} still {r.status_code} on the other replica"
        time.sleep(0.01)


def test_logout_disable_and_role_change_reach_the_other_replica(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    a, b = replicas
    admin = _login(a.base_url)
    r = httpx.post(
        f"{a.base_url}/users",
        json={"username": "replica-user", "password": USER_PASSWORD, "role": "user"},
        headers=admin,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    user_id = r.json()["id"]

    # Logout through A: B, which has the token cached (TTL 300 s), refuses it.
    user = _login(a.base_url, "replica-user", USER_PASSWORD)
    assert httpx.get(f"{b.base_url}/auth/me", headers=user, timeout=10).status_code == 200
    assert httpx.post(f"{a.base_url}/auth/logout", headers=user, timeout=10).status_code == 200
    assert _refused_on(b.base_url, user, "/auth/me", 401) < 1.0

    # Role change through A: B answers with the new role.
    user = _login(a.base_url, "replica-user", USER_PASSWORD)
    assert httpx.get(f"{b.base_url}/users", headers=user, timeout=10).status_code == 403
    r = httpx.patch(f"{a.base_url}/users/{user_id}", json={"role": "admin"}, headers=admin, timeout=10)
    assert r.status_code == 200, r.text
    assert _refused_on(b.base_url, user, "/users", 200) < 1.0

    # Disabled through A: B refuses the cached token.
    assert httpx.get(f"{b.base_url}/auth/me", headers=user, timeout=10).status_code == 200
    r = httpx.patch(f"{a.base_url}/users/{user_id}", json={"is_active": False}, headers=admin, timeout=10)
    assert r.status_code == 200, r.text
    assert _refused_on(b.base_url, user, "/auth/me", 401) < 1.0
