"""What a session worker publishes its events on (EVENT_BUS), and that a bus outage loses no event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from state.db import create_engine_for, run_migrations, session_factory
from state.event_bus import EVENTS_CHANNEL, RedisBus, create_publisher
from state.event_log import EventLog
from state.sessions import OptimizationSession
from state.users import User

PG = "postgresql+psycopg://u@h/db"
SQLITE = "sqlite:///x.db"


def test_a_worker_publishes_on_redis_only() -> None:
    assert isinstance(create_publisher("redis", SQLITE, "redis://h:1/0"), RedisBus)
    assert isinstance(create_publisher("redis", PG, "redis://h:1/0"), RedisBus)
    # PostgreSQL's NOTIFY is part of the append; the in-process bus reaches no other process.
    assert create_publisher("postgres", PG, "redis://h:1/0") is None
    assert create_publisher("auto", PG, "redis://h:1/0") is None
    assert create_publisher("auto", SQLITE, "redis://h:1/0") is None
    assert create_publisher("local", SQLITE, "redis://h:1/0") is None


async def test_a_failed_publish_keeps_the_event(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    await asyncio.to_thread(run_migrations, url)
    engine = create_engine_for(url)
    maker = session_factory(engine)
    async with maker() as db:
        user = User(username="u", hashed_password="x")
        db.add(user)
        await db.commit()
        db.add(OptimizationSession(id="a" * 32, owner_id=user.id, model_id="m", criteria={}))
        await db.commit()
    published: list[tuple[str, str]] = []

    async def flaky(channel: str, payload: str) -> None:
        published.append((channel, payload))
        if len(published) == 1:
            raise ConnectionError("redis is down")

    events = EventLog(maker, notifier=flaky)
    try:
        first = await events.append("a" * 32, "status", {"status": "running"})
        second = await events.append("a" * 32, "progress", {"i": 1})
        assert first is not None and second is not None
        assert [r.seq for r in await events.read("a" * 32)] == [1, 2]
        assert published == [(EVENTS_CHANNEL, f"{'a' * 32}:1"), (EVENTS_CHANNEL, f"{'a' * 32}:2")]
    finally:
        await engine.dispose()


async def test_the_redis_publisher_needs_no_listener() -> None:
    redis = pytest.importorskip("redis.asyncio")
    bus = create_publisher("redis", SQLITE, "redis://127.0.0.1:6379/0")
    assert bus is not None
    listener = redis.from_url("redis://127.0.0.1:6379/0")
    try:
        await listener.ping()
    except Exception:  # noqa: BLE001
        await listener.aclose()
        pytest.skip("no Redis on 127.0.0.1:6379")
    pubsub = listener.pubsub()
    await pubsub.subscribe(EVENTS_CHANNEL)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    try:
        await bus.publish(EVENTS_CHANNEL, "s:7")  # never started: a worker only publishes
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
        assert message is not None and message["data"] == b"s:7"
    finally:
        await bus.stop()
        await pubsub.aclose()
        await listener.aclose()


async def test_two_processes_appending_to_one_session_never_collide(tmp_path: Path) -> None:
    """Two event logs (as the API's cancel and the session's worker have, each its own lock) append to
    one session at once: every event is kept, with gapless seqs, none refused."""
    url = f"sqlite:///{tmp_path / 'events.db'}"
    await asyncio.to_thread(run_migrations, url)
    engines = [create_engine_for(url), create_engine_for(url)]
    makers = [session_factory(e) for e in engines]
    async with makers[0]() as db:
        user = User(username="u", hashed_password="x")
        db.add(user)
        await db.commit()
        db.add(OptimizationSession(id="c" * 32, owner_id=user.id, model_id="m", criteria={}))
        await db.commit()
    api, worker = EventLog(makers[0]), EventLog(makers[1])
    try:
        await asyncio.gather(
            *[log.append("c" * 32, "progress", {"i": i}) for i in range(15) for log in (api, worker)]
        )
        assert [r.seq for r in await api.read("c" * 32)] == list(range(1, 31))
    finally:
        for engine in engines:
            await engine.dispose()
