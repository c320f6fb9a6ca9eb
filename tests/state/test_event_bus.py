"""The Redis event bus (EVENT_BUS=redis) on the local Redis: messages reach another bus instance
(another replica), and an event appended through an event log with the bus as notifier wakes the
other replica's subscriber, who then reads the event from the log."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from state.db import create_engine_for, run_migrations, session_factory
from state.event_bus import AUTH_CHANNEL, EVENTS_CHANNEL, RedisBus
from state.event_log import WAKE, EventLog
from state.sessions import OptimizationSession

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")


async def test_redis_bus_carries_auth_messages_and_event_wakeups(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'robopt.db'}"
    run_migrations(url)
    engine = create_engine_for(url)
    sessionmaker = session_factory(engine)
    a, b = RedisBus(REDIS_URL), RedisBus(REDIS_URL)
    await a.start()
    await b.start()
    try:
        got: asyncio.Queue[str] = asyncio.Queue()
        b.on(AUTH_CHANNEL, got.put_nowait)
        await a.publish(AUTH_CHANNEL, "user:u1")
        assert await asyncio.wait_for(got.get(), timeout=5) == "user:u1"

        # Replica A appends; replica B's event log (same database) has a subscriber.
        log_a, log_b = EventLog(sessionmaker, notifier=a.publish), EventLog(sessionmaker)
        b.on(EVENTS_CHANNEL, lambda payload: log_b.wake(payload.partition(":")[0]))
        async with sessionmaker() as db:
            row = OptimizationSession(owner_id="o" * 32, model_id="m" * 32, criteria={})
            db.add(row)
            await db.commit()
            session_id = row.id
        async with log_b.subscribe(session_id) as queue:
            record = await log_a.append(session_id, "status", {"status": "queued"})
            assert record is not None
            assert await asyncio.wait_for(queue.get(), timeout=5) is WAKE
            assert [(r.seq, r.type) for r in await log_b.read(session_id)] == [(1, "status")]
    finally:
        await a.stop()
        await b.stop()
        await engine.dispose()
