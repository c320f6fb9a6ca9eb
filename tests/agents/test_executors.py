"""The run table (claims, leases, one active attempt, fencing) and the worker-process executor.

On a real database (SQLite, and PostgreSQL when TEST_DATABASE_URL is set), through the real API
where a session runs: a worker process killed with SIGKILL mid-session leaves a session that a new
worker resumes from its checkpoint without repeating a finished trial.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from agents.worker import claim_session
from api.main import create_app
from state import runs
from state.db import create_engine_for, run_migrations, session_factory
from state.event_log import EventLog
from state.runs import Claim, Held, LeaseLost, RunFence, SessionRun, current_fence
from state.sessions import OptimizationSession, SessionEvent
from state.settings import Settings
from tests.api.session_helpers import read_events, upload_policy, wait_terminal
from tests.conftest import ADMIN_PASSWORD, REPO_ROOT, login, make_settings


@pytest.fixture
async def sessionmaker(db_url: str) -> AsyncIterator[Any]:
    await asyncio.to_thread(run_migrations, db_url)  # the SQLite copy is at head already; PostgreSQL is empty
    engine = create_engine_for(db_url)
    yield session_factory(engine)
    await engine.dispose()


async def _session(sessionmaker: Any) -> str:
    async with sessionmaker() as db:
        row = OptimizationSession(owner_id="u" * 32, model_id="m" * 32, criteria={})
        db.add(row)
        await db.commit()
        return row.id


async def test_one_active_attempt_a_held_lease_and_a_takeover_after_expiry(sessionmaker: Any) -> None:
    runs.install_fencing()
    sid = await _session(sessionmaker)
    first = await runs.claim(sessionmaker, sid, runs.worker_identity("test"), lease_s=0.6)
    assert isinstance(first, Claim) and first.attempt == 1
    held = await runs.claim(sessionmaker, sid, runs.worker_identity("test"), lease_s=0.6)
    assert isinstance(held, Held) and held.attempt == 1
    assert await runs.renew(sessionmaker, first.run_id, lease_s=0.6)

    # The database itself refuses a second active attempt, whatever a worker does.
    async with sessionmaker() as db:
        now = runs.utcnow()
        db.add(SessionRun(session_id=sid, attempt=9, worker_id="x", lease_expires_at=now, heartbeat_at=now))
        with pytest.raises(IntegrityError):
            await db.commit()

    await asyncio.sleep(0.8)  # the first worker stopped renewing: its lease expires
    second = await runs.claim(sessionmaker, sid, runs.worker_identity("test"), lease_s=5)
    assert isinstance(second, Claim) and second.attempt == 2
    assert not await runs.renew(sessionmaker, first.run_id, lease_s=5)  # the old worker learns it lost
    rows = await runs.attempts(sessionmaker, sid)
    assert [(r.attempt, r.status) for r in rows] == [(1, "expired"), (2, "active")]


async def test_a_worker_whose_lease_was_taken_over_cannot_write(sessionmaker: Any) -> None:
    runs.install_fencing()
    sid = await _session(sessionmaker)
    events = EventLog(sessionmaker)
    old = await runs.claim(sessionmaker, sid, runs.worker_identity("test"), lease_s=0.3)
    assert isinstance(old, Claim)
    fence = RunFence(sessionmaker, old.run_id, sid, old.attempt)
    token = current_fence.set(fence)
    try:
        assert await events.append(sid, "progress", {"by": "old, while active"}) is not None
    finally:
        current_fence.reset(token)

    await asyncio.sleep(0.5)
    new = await runs.claim(sessionmaker, sid, runs.worker_identity("test"), lease_s=30)
    assert isinstance(new, Claim) and new.attempt == 2

    async def old_worker_writes() -> None:
        current_fence.set(fence)  # this task's context only, as in the old worker's attempt
        with pytest.raises(LeaseLost):
            await events.append(sid, "progress", {"by": "old, after the takeover"})
        with pytest.raises(LeaseLost):
            async with sessionmaker() as db:
                row = await db.get(OptimizationSession, sid)
                row.status, row.current_step = "failed", "written by a worker that lost its lease"
                db.add(row)
                await db.commit()
        with pytest.raises(LeaseLost):
            await fence.check_now()  # what the checkpointer's writes check first

    await asyncio.create_task(old_worker_writes())
    # The new holder writes; the old one's writes never reached the database.
    new_fence = RunFence(sessionmaker, new.run_id, sid, new.attempt)
    token = current_fence.set(new_fence)
    try:
        assert await events.append(sid, "progress", {"by": "new"}) is not None
    finally:
        current_fence.reset(token)
    async with sessionmaker() as db:
        row = await db.get(OptimizationSession, sid)
        written = (await db.exec(select(SessionEvent).where(SessionEvent.session_id == sid))).all()
    assert row.status == "queued" and row.current_step is None
    assert [e.payload["by"] for e in sorted(written, key=lambda e: e.seq)] == ["old, while active", "new"]


async def test_a_claimer_leaves_a_session_to_a_live_holder_and_takes_over_a_dead_one(
    sessionmaker: Any, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "data", run_lease_s=1.0, run_heartbeat_s=0.2)
    sid = await _session(sessionmaker)

    class _Runner:  # claim_session only needs the sessionmaker
        pass

    runner: Any = _Runner()
    runner.sessionmaker = sessionmaker
    live = await runs.claim(sessionmaker, sid, runs.worker_identity("test"), lease_s=1.0)
    assert isinstance(live, Claim)

    async def beat() -> None:
        for _ in range(20):
            await asyncio.sleep(0.2)
            await runs.renew(sessionmaker, live.run_id, lease_s=1.0)

    beating = asyncio.create_task(beat())
    assert await claim_session(runner, settings, sid, runs.worker_identity("test")) is None
    beating.cancel()
    await runs.end(sessionmaker, live.run_id, "finished")

    # A holder that is a dead process on this machine: no need to wait for its lease.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = await runs.claim(sessionmaker, sid, runs.worker_identity("process", pid=dead.pid), lease_s=600)
    assert isinstance(gone, Claim)
    started = time.monotonic()
    taken = await claim_session(runner, settings, sid, runs.worker_identity("test"))
    assert isinstance(taken, Claim) and taken.attempt == gone.attempt + 1
    assert time.monotonic() - started < 5


# -- the worker-process executor through the API ---------------------------------------------------

SLOW = {
    "planner": "rules",
    "criteria_name": "max_compression",
    "max_trials": 4,
    "benchmark_iterations": 200,
    "benchmark_warmup": 2,
}


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(
        tmp_path / "data", db_url, executor="process", run_lease_s=4.0, run_heartbeat_s=1.0, max_upload_mb=20
    )


@pytest.mark.slow
async def test_a_worker_process_killed_mid_session_resumes_without_repeating_trials(
    app: FastAPI, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    headers = await login(client, "admin", ADMIN_PASSWORD)
    model_id = await upload_policy(client, headers, tmp_path)
    r = await client.post("/optimize", headers=headers, json={"model_id": model_id, **SLOW})
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    executor = app.state.executor
    deadline = time.monotonic() + 120
    while True:
        status = (await client.get(f"/sessions/{sid}/status", headers=headers)).json()
        if status["trials_done"] >= 1:
            break
        assert status["status"] not in ("completed", "failed", "cancelled"), status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)
    recorded = (await client.get(f"/sessions/{sid}/results", headers=headers)).json()["trials"]
    pid = executor.worker_pid(sid)
    assert pid is not None and pid != os.getpid()
    os.kill(pid, signal.SIGKILL)

    final = await wait_terminal(client, headers, sid, timeout_s=180)
    assert final["status"] == "completed", final
    ended = time.monotonic() + 30
    while executor.is_running(sid):  # the worker ends its attempt and exits
        assert time.monotonic() < ended
        await asyncio.sleep(0.1)
    attempts = await runs.attempts(app.state.sessionmaker, sid)
    assert [(a.attempt, a.status) for a in attempts] == [(1, "expired"), (2, "finished")]
    assert attempts[0].worker_id.split(":")[3] == str(pid)
    trials = (await client.get(f"/sessions/{sid}/results", headers=headers)).json()["trials"]
    assert [t["number"] for t in trials] == list(range(1, len(trials) + 1))
    assert trials[: len(recorded)] == recorded  # the same records: not run or measured again
    events = await read_events(client, headers, sid)
    executions: dict[int, list[int]] = {}
    for e in events:
        if e["event"] == "tool.result":
            executions.setdefault(e["data"]["trial"], []).append(e["data"]["attempt"])
    for t in recorded:
        assert executions[t["number"]] == [1], executions
    resumed = [e["data"] for e in events if e["event"] == "status" and e["data"].get("resumed")]
    assert resumed and resumed[0]["attempt"] == 2
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))


def test_the_api_serves_status_and_listings_without_torch(tmp_path: Path) -> None:
    """A fresh interpreter: the app, its lifespan (worker-process executor) and the status, listing
    and monitoring requests load no torch. (Uploads and evaluation data load it: they validate models.)"""
    script = textwrap.dedent(
        f"""
        import asyncio, json, sys
        import httpx
        from api.main import create_app
        from state.sessions import OptimizationSession
        from tests.conftest import make_settings

        async def main():
            settings = make_settings({str(tmp_path / "data")!r}, executor="process")
            app = create_app(settings)
            async with app.router.lifespan_context(app):
                async with app.state.sessionmaker() as db:
                    row = OptimizationSession(owner_id="x", model_id="m", criteria={{}}, status="completed")
                    db.add(row)
                    await db.commit()
                    sid = row.id
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    body = {{"username": "admin", "password": {ADMIN_PASSWORD!r}}}
                    r = await c.post("/auth/login", json=body)
                    h = {{"Authorization": "Bearer " + r.json()["access_token"]}}
                    codes = [
                        (await c.get(path, headers=h)).status_code
                        for path in ("/health", "/sessions", f"/sessions/{{sid}}/status", "/models",
                                     f"/sessions/{{sid}}/messages")
                    ]
            print(json.dumps({{"codes": codes, "torch": "torch" in sys.modules}}))

        asyncio.run(main())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXECUTOR", "DATABASE_URL"))}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["codes"] == [200, 200, 200, 200, 200], result
    assert result["torch"] is False


def test_the_settings_refuse_a_heartbeat_slower_than_half_the_lease(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RUN_HEARTBEAT_S"):
        make_settings(tmp_path, run_lease_s=4.0, run_heartbeat_s=3.0)


async def test_a_running_session_taken_over_stops_its_old_worker_without_a_write(
    tmp_path: Path, db_url: str
) -> None:
    """End to end, in-process: the attempt of a running session is taken over by another worker; the
    old one stops at its next write or beat, records nothing (no failure, no event), and ends `lost`."""
    settings = make_settings(
        tmp_path / "data",
        db_url,
        executor="inprocess",
        run_lease_s=4.0,
        run_heartbeat_s=1.0,
        max_upload_mb=20,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
            headers = await login(client, "admin", ADMIN_PASSWORD)
            model_id = await upload_policy(client, headers, tmp_path)
            r = await client.post("/optimize", headers=headers, json={"model_id": model_id, **SLOW})
            sid = r.json()["session_id"]
            sm = app.state.sessionmaker
            deadline = time.monotonic() + 120
            while (await client.get(f"/sessions/{sid}/status", headers=headers)).json()["trials_done"] < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            # Another worker takes the session over (as `claim` does once the old lease ran out; done
            # here in one transaction so that the old worker's heartbeat cannot renew in between).
            async with sm() as db:
                old = (await db.exec(select(SessionRun).where(SessionRun.session_id == sid))).one()
                old.status, old.ended_at = "expired", runs.utcnow()
                db.add(old)
                await db.flush()
                now = runs.utcnow()
                intruder = SessionRun(
                    session_id=sid,
                    attempt=2,
                    worker_id=runs.worker_identity("intruder"),
                    lease_expires_at=now + timedelta(seconds=600),
                    heartbeat_at=now,
                )
                db.add(intruder)
                await db.commit()
                intruder_id = intruder.id
            async with sm() as db:
                seen = len((await db.exec(select(SessionEvent).where(SessionEvent.session_id == sid))).all())
            stopped = time.monotonic() + 30
            while app.state.executor.is_running(sid):
                assert time.monotonic() < stopped, "the old worker kept running after the takeover"
                await asyncio.sleep(0.1)
            async with sm() as db:
                row = await db.get(OptimizationSession, sid)
                after = len((await db.exec(select(SessionEvent).where(SessionEvent.session_id == sid))).all())
            assert after == seen  # not one event from the worker that lost its lease
            assert row.status == "running" and row.error is None  # nor a failure or an end
            attempts = await runs.attempts(sm, sid)
            assert [(a.attempt, a.status) for a in attempts] == [(1, "expired"), (2, "active")]
            await runs.end(sm, intruder_id, "finished")
