"""EVENT_BUS=redis across API replicas and session workers: a session started on replica A, run by
A's worker process, streams every event through replica B promptly.

The worker process writes the events (agents/worker.py); the only thing that can wake B's stream is
that worker publishing each event on Redis (EVENT_REREAD_S is 60 s, and on Redis the PostgreSQL
NOTIFY has no listener). The test also listens on Redis itself and checks that every event was
published there.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from state.event_bus import EVENTS_CHANNEL
from tests.api.session_helpers import parse_sse
from tests.api.test_replicas import _login, start_session
from tests.conftest import LiveServer, LiveServerFactory

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REDIS_URL = "redis://127.0.0.1:6379/0"
LATE_S = 2.0  # an event reaches B's stream within this of being written (the re-read is 60 s)


@pytest.fixture
def redis_messages() -> Any:
    """Every payload published on the events channel while the test runs (a thread subscribed)."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    pubsub = client.pubsub()
    pubsub.subscribe(EVENTS_CHANNEL)
    seen: list[str] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message and message.get("type") == "message":
                seen.append(message["data"].decode())

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    yield seen
    stop.set()
    thread.join(5)
    pubsub.close()
    client.close()


@pytest.fixture
def redis_replicas(
    postgres_database_url: str, live_server_factory: LiveServerFactory, tmp_path: Path, redis_messages: Any
) -> tuple[LiveServer, LiveServer]:
    from tests.conftest import _truncate_postgres

    _truncate_postgres(postgres_database_url)
    env = {
        "DATABASE_URL": postgres_database_url,
        "JWT_SECRET_KEY": "replica-test-secret-" + "x" * 32,
        "EVENT_BUS": "redis",
        "REDIS_URL": REDIS_URL,
        "EVENT_REREAD_S": "60",
        "EXECUTOR": "process",
    }
    return (
        live_server_factory(env=env, data_dir=tmp_path / "a"),
        live_server_factory(env=env, data_dir=tmp_path / "b"),
    )


def _timed_stream(
    base: str, headers: dict[str, str], session_id: str, timeout_s: float
) -> list[tuple[dict[str, Any], datetime, datetime]]:
    """(event, its created_at, when it arrived here) for each event of the stream."""
    out: list[tuple[dict[str, Any], datetime, datetime]] = []
    block: list[str] = []
    with httpx.stream(
        "GET", f"{base}/sessions/{session_id}/events", headers=headers, timeout=httpx.Timeout(timeout_s)
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            block.append(line)
            if line != "":
                continue
            arrived = datetime.now(UTC)
            for event in parse_sse(block):
                created = datetime.fromisoformat(event["data"]["created_at"])
                out.append((event, created if created.tzinfo else created.replace(tzinfo=UTC), arrived))
            block = []
    return out


def test_worker_events_reach_the_other_replica_through_redis(
    redis_replicas: tuple[LiveServer, LiveServer], redis_messages: list[str], tmp_path: Path
) -> None:
    a, b = redis_replicas
    headers = _login(a.base_url)
    session_id = start_session(a.base_url, headers, tmp_path)

    headers_b = _login(b.base_url)
    opened = datetime.now(UTC)
    timed = _timed_stream(b.base_url, headers_b, session_id, timeout_s=55)
    events = [e for e, _, _ in timed]
    seqs = [int(e["id"]) for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # all of them, in order, none twice
    assert events[-1]["event"] == "end" and len(seqs) > 5
    # Every event written while B's stream was open reached it within LATE_S: a wake-up from the
    # bus, not the 60 s re-read (the replayed ones, written before, are older by nature).
    live = [
        (int(e["id"]), (arrived - created).total_seconds())
        for e, created, arrived in timed
        if created >= opened
    ]
    assert len(live) > 3, "the session ended before B's stream opened: nothing was followed live"
    late = [(seq, round(s, 2)) for seq, s in live if s > LATE_S]
    assert not late, f"events that reached replica B late (seq, seconds): {late}"

    # Each was published on Redis: the worker process publishes what it writes.
    wanted = {f"{session_id}:{seq}" for seq in seqs}
    deadline = time.monotonic() + 5
    while not wanted <= set(redis_messages) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not wanted - set(redis_messages), sorted(wanted - set(redis_messages))

    # Last-Event-ID replay through B is unchanged: exactly what came after.
    tail = _timed_stream(b.base_url, {**headers_b, "Last-Event-ID": str(seqs[-3])}, session_id, timeout_s=30)
    assert [int(e["id"]) for e, _, _ in tail] == seqs[-2:]
