"""The event log: monotonic seq per session under concurrent appends, dedupe keys, live fan-out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from state.db import create_engine_for, run_migrations, session_factory
from state.event_log import EventLog
from state.sessions import OptimizationSession
from state.users import User


@pytest.fixture
async def log(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'events.db'}"
    await asyncio.to_thread(run_migrations, url)
    engine = create_engine_for(url)
    maker = session_factory(engine)
    async with maker() as db:
        user = User(username="u", hashed_password="x")
        db.add(user)
        await db.commit()
        for sid in ("a" * 32, "b" * 32):
            db.add(OptimizationSession(id=sid, owner_id=user.id, model_id="m", criteria={}))
        await db.commit()
    yield EventLog(maker)
    await engine.dispose()


async def test_seq_is_gapless_per_session_under_concurrency(log: EventLog) -> None:
    a, b = "a" * 32, "b" * 32
    await asyncio.gather(*[log.append(sid, "progress", {"i": i}) for i in range(20) for sid in (a, b)])
    for sid in (a, b):
        seqs = [r.seq for r in await log.read(sid)]
        assert seqs == list(range(1, 21))
    assert [r.seq for r in await log.read(a, after=18)] == [19, 20]
    assert await log.count(a, "progress") == 20


async def test_dedupe_key_skips_an_event_already_written(log: EventLog) -> None:
    sid = "a" * 32
    first = await log.append(sid, "tool.result", {"trial": 1}, dedupe_key="t1.tool")
    again = await log.append(sid, "tool.result", {"trial": 1}, dedupe_key="t1.tool")
    assert first is not None and first.seq == 1 and again is None
    assert await log.count(sid, "tool.result") == 1


async def test_subscribers_get_live_events_of_their_session_only(log: EventLog) -> None:
    a, b = "a" * 32, "b" * 32
    async with log.subscribe(a) as queue:
        await log.append(b, "status", {"status": "running"})
        await log.append(a, "status", {"status": "running"})
        record = await asyncio.wait_for(queue.get(), timeout=2)
        assert record.session_id == a and record.seq == 1 and queue.empty()
