"""Crash chaos on PostgreSQL: sessions SIGKILLed at seeded random moments, the server restarted each time.

10 sessions (a tiny policy, small budgets) queue on one server; whenever the next one is running, the
server is SIGKILLed after a seeded random delay and started again on the same database and DATA_DIR.
After the last restart every session must complete with no trial repeated (numbers 1..n, finished
trials untouched), its event ids contiguous from 1 (nothing lost or doubled), and no artifact on disk
that no database row names. A kill during an upload leaves nothing behind once the server is back.
Runs when TEST_DATABASE_URL is set (its own database, dropped after); skips with the reason otherwise.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.api.session_helpers import TERMINAL, parse_sse, write_policy
from tests.conftest import LiveServer, LiveServerFactory
from tests.hardening.conftest import files_under, login

SESSIONS = 10
SEED = int(os.environ.get("CHAOS_SEED", "15"))
CRITERIA = {
    "criteria_name": "max_compression",
    "max_trials": 3,
    "time_budget_s": 60,
    "benchmark_iterations": 50,
}
POLICY = {"obs_dim": 8, "act_dim": 2, "hidden": [64]}


@pytest.fixture
def chaos_database() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.skip("TEST_DATABASE_URL is not set: the crash-chaos test runs against PostgreSQL only")
    import psycopg

    base = make_url(url)
    admin = base.render_as_string(hide_password=False).replace("postgresql+psycopg://", "postgresql://")
    name = f"robopt_chaos_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _get(server: LiveServer, headers: dict[str, str], path: str) -> Any:
    r = httpx.get(f"{server.base_url}{path}", headers=headers, timeout=30)
    assert r.status_code == 200, (path, r.text)
    return r.json()


def _events(server: LiveServer, headers: dict[str, str], session_id: str) -> list[dict[str, Any]]:
    with httpx.stream(
        "GET", f"{server.base_url}/sessions/{session_id}/events", headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200
        return parse_sse(list(r.iter_lines()))


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_sessions_survive_sigkill_at_random_moments(
    chaos_database: str, live_server_factory: LiveServerFactory, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    server = live_server_factory(env={"DATABASE_URL": chaos_database, "MAX_CONCURRENT_SESSIONS": "3"})
    headers = login(server.base_url)
    path, arch = write_policy(tmp_path, POLICY)
    with open(path, "rb") as f:
        r = httpx.post(
            f"{server.base_url}/models/upload",
            headers=headers,
            files={"file": ("policy.pt", f, "application/octet-stream")},
            data={"name": "policy", "architecture": arch},
            timeout=60,
        )
    assert r.status_code == 200, r.text
    model_id = r.json()["model_id"]
    session_ids = []
    for _ in range(SESSIONS):
        r = httpx.post(
            f"{server.base_url}/optimize",
            headers=headers,
            json={"model_id": model_id, **CRITERIA},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        session_ids.append(r.json()["session_id"])

    started = time.monotonic()
    kills: list[dict[str, Any]] = []
    for session_id in session_ids:
        deadline = time.monotonic() + 120
        while (status := _get(server, headers, f"/sessions/{session_id}/status"))["status"] == "queued":
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.05)
        if status["status"] in TERMINAL:
            kills.append({"session": session_id, "landed": "after it ended"})
            continue
        delay = rng.uniform(0.0, 1.5)
        time.sleep(delay)
        before = _get(server, headers, f"/sessions/{session_id}/status")
        recorded = httpx.get(f"{server.base_url}/sessions/{session_id}/results", headers=headers, timeout=30)
        server.kill()
        kills.append({
            "session": session_id,
            "delay_s": round(delay, 2),
            "landed": before["status"],
            "trials_done": before["trials_done"],
            "recorded": recorded.json()["trials"] if recorded.status_code == 200 else [],
        })  # fmt: skip
        server.start()
        headers = login(server.base_url)

    # Every session completes; no trial repeated; the events are contiguous and never doubled.
    for session_id, kill in zip(session_ids, kills, strict=True):
        deadline = time.monotonic() + 180
        while (status := _get(server, headers, f"/sessions/{session_id}/status"))["status"] not in TERMINAL:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.2)
        assert status["status"] == "completed", (session_id, status, server.log_tail())
        trials = _get(server, headers, f"/sessions/{session_id}/results")["trials"]
        assert [t["number"] for t in trials] == list(range(1, len(trials) + 1))
        recorded = kill.get("recorded") or []
        assert trials[: len(recorded)] == recorded, "a trial finished before the kill was redone"
        events = _events(server, headers, session_id)
        ids = [int(e["id"]) for e in events]
        assert ids == list(range(1, len(ids) + 1)), (session_id, ids)
        applied: dict[tuple[int, int], int] = {}
        for e in events:
            if e["event"] == "tool.result":
                key = (e["data"]["trial"], e["data"]["attempt"])
                applied[key] = applied.get(key, 0) + 1
        assert all(n == 1 for n in applied.values()), applied
        for t in recorded:
            assert [a for (trial, a) in applied if trial == t["number"]] == [t["attempt"]]
    elapsed = time.monotonic() - started

    # No orphaned artifact: every stored model directory is a row of the registry.
    listed = {m["id"] for m in _get(server, headers, "/models?limit=100")["items"]}
    on_disk = (
        {p.name for p in (server.data_dir / "artifacts" / "models").iterdir()}
        if (server.data_dir / "artifacts" / "models").is_dir()
        else set()
    )
    assert on_disk <= listed, on_disk - listed

    landed = sum(1 for k in kills if k["landed"] == "running")
    print(
        f"\nchaos: {SESSIONS} sessions, {len(kills)} SIGKILLs (seed {SEED}), {landed} mid-session, "
        f"{SESSIONS}/{SESSIONS} completed, 0 trials repeated, event ids contiguous, 0 orphans, "
        f"in {elapsed:.0f} s"
    )


def test_kill_during_an_upload_leaves_nothing_after_restart(live_server_factory: LiveServerFactory) -> None:
    """SIGKILL while a 64 MiB upload streams in: the partial file is there after the crash, gone once the
    server is back (its writer's pid is dead), and nothing reached the artifact store or the registry."""
    server = live_server_factory()
    headers = login(server.base_url)
    token = headers["Authorization"].split()[1]
    boundary = "chaos"
    preamble = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.onnx"\r\n\r\n'.encode()
    )
    head = (
        f"POST /models/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(preamble) + 64 * 1024 * 1024}\r\n\r\n"
    ).encode()
    uploads = server.data_dir / "uploads"
    before_files = files_under(server.data_dir / "artifacts")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + preamble)
        for _ in range(4):
            sock.sendall(b"\x01" * (1024 * 1024))
        deadline = time.monotonic() + 10
        while not any(uploads.glob(".upload-*")):
            assert time.monotonic() < deadline, "no partial upload while streaming"
            time.sleep(0.05)
        server.kill()
    assert any(uploads.glob(".upload-*"))  # the crash left it
    server.start()
    assert not [p.name for p in uploads.iterdir() if p.is_file()], list(uploads.iterdir())
    assert files_under(server.data_dir / "artifacts") == before_files
    assert _get(server, login(server.base_url), "/models")["total"] == 0
    print("\nchaos: a SIGKILL mid-upload left nothing after the restart")
