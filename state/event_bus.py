"""A small pub/sub bus between API replicas: wake-ups for the event log's subscribers, auth invalidations.

The bus carries no data that matters: a session's events are read from the persisted log
(state/event_log.py), and an auth invalidation only drops cache entries (api/auth_cache.py). So a
message lost while a connection is down costs a delay, never an event: on reconnecting, the bus
calls its `on_reconnect` handlers, which wake every subscriber and clear the caches.

- `LocalBus`: one process; `publish` calls the handlers directly (the default with SQLite).
- `PostgresBus`: `LISTEN/NOTIFY` on the service's PostgreSQL (EVENT_BUS=postgres, or auto with a
  PostgreSQL DATABASE_URL). The event log sends its NOTIFY inside the append's transaction, so it
  is delivered exactly when the row is committed, by whichever process wrote it.
- `RedisBus`: Redis pub/sub (EVENT_BUS=redis, REDIS_URL), for SQLite or another database.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger("robopt.bus")

EVENTS_CHANNEL = "robopt_events"  # payload "<session_id>:<seq>"
AUTH_CHANNEL = "robopt_auth"  # payload "jti:<jti>" or "user:<user_id>"
CHANNELS = (EVENTS_CHANNEL, AUTH_CHANNEL)
RECONNECT_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)

Handler = Callable[[str], None]


class EventBus:
    """In-process bus; the base of the cross-process ones."""

    kind = "local"
    cross_process = False

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._reconnect_handlers: list[Callable[[], None]] = []

    def on(self, channel: str, handler: Handler) -> None:
        self._handlers.setdefault(channel, []).append(handler)

    def on_reconnect(self, handler: Callable[[], None]) -> None:
        self._reconnect_handlers.append(handler)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def publish(self, channel: str, payload: str) -> None:
        self._dispatch(channel, payload)

    def _dispatch(self, channel: str, payload: str) -> None:
        for handler in self._handlers.get(channel, ()):
            try:
                handler(payload)
            except Exception:  # one broken handler must not silence the others
                log.exception("bus handler failed on %s", channel)

    def _reconnected(self) -> None:
        for handler in self._reconnect_handlers:
            try:
                handler()
            except Exception:
                log.exception("bus reconnect handler failed")


LocalBus = EventBus


class _ListeningBus(EventBus, abc.ABC):
    """A listener task that reconnects with backoff; subclasses open the connection and read it."""

    cross_process = True

    def __init__(self) -> None:
        super().__init__()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.kind}-bus")
        # Wait for the first LISTEN/SUBSCRIBE, so that nothing published after start-up is missed.
        ready = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait({ready, self._task}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if self._task in done:
                self._task.result()  # raises the connection error
            raise RuntimeError(f"the {self.kind} event bus did not connect within 15 s")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._close_publisher()

    async def _run(self) -> None:
        lost = 0  # connections lost in a row; > 0 on connecting means messages may have been missed
        while not self._stopping:
            try:
                async for channel, payload in self._listen():
                    if channel is None:  # listening (again)
                        if lost:
                            log.warning("%s event bus reconnected", self.kind)
                            self._reconnected()
                        lost = 0
                        continue
                    self._dispatch(channel, payload)
                raise ConnectionError("the listening connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._ready.is_set():
                    raise  # the first connection failed: start() reports it
                delay = RECONNECT_DELAYS_S[min(lost, len(RECONNECT_DELAYS_S) - 1)]
                lost += 1
                log.warning("%s event bus connection lost (%s); retrying in %.1f s", self.kind, exc, delay)
                await asyncio.sleep(delay)

    @abc.abstractmethod
    def _listen(self) -> Any:
        """An async iterator of (channel | None, payload); None: "now listening"."""

    async def _close_publisher(self) -> None:
        return None


def postgres_conninfo(url: str) -> str:
    """A libpq URL (psycopg) from a SQLAlchemy one (`postgresql+psycopg://` -> `postgresql://`)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresBus(_ListeningBus):
    kind = "postgres"

    def __init__(self, database_url: str) -> None:
        super().__init__()
        self._conninfo = postgres_conninfo(database_url)
        self._publisher: Any = None
        self._publish_lock = asyncio.Lock()

    async def _listen(self) -> Any:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
            for channel in CHANNELS:
                await conn.execute(f'LISTEN "{channel}"')
            self._ready.set()
            yield None, ""
            async for notify in conn.notifies():
                yield notify.channel, notify.payload

    async def publish(self, channel: str, payload: str) -> None:
        import psycopg

        async with self._publish_lock:
            for attempt in (0, 1):
                try:
                    if self._publisher is None or self._publisher.closed:
                        self._publisher = await psycopg.AsyncConnection.connect(
                            self._conninfo, autocommit=True
                        )
                    await self._publisher.execute("SELECT pg_notify(%s, %s)", (channel, payload))
                    return
                except psycopg.OperationalError:
                    self._publisher = None
                    if attempt:
                        raise

    async def _close_publisher(self) -> None:
        if self._publisher is not None:
            await self._publisher.close()
            self._publisher = None


class RedisBus(_ListeningBus):
    kind = "redis"

    def __init__(self, redis_url: str) -> None:
        super().__init__()
        self._url = redis_url
        self._publisher: Any = None

    async def _listen(self) -> Any:
        import redis.asyncio as redis

        client = redis.from_url(self._url)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(*CHANNELS)
            self._ready.set()
            yield None, ""
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                channel, data = message["channel"], message["data"]
                yield (
                    channel.decode() if isinstance(channel, bytes) else str(channel),
                    data.decode() if isinstance(data, bytes) else str(data),
                )
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await client.aclose()

    async def publish(self, channel: str, payload: str) -> None:
        import redis.asyncio as redis

        if self._publisher is None:
            self._publisher = redis.from_url(self._url)
        await self._publisher.publish(channel, payload)

    async def _close_publisher(self) -> None:
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.aclose()
            self._publisher = None


def bus_kind(event_bus: str, database_url: str) -> str:
    """The bus EVENT_BUS asks for; `auto` is PostgreSQL's own when the database is PostgreSQL."""
    if event_bus != "auto":
        return event_bus
    return "postgres" if make_url(database_url).get_backend_name() == "postgresql" else "local"


def create_event_bus(event_bus: str, database_url: str, redis_url: str) -> EventBus:
    kind = bus_kind(event_bus, database_url)
    if kind == "postgres":
        if make_url(database_url).get_backend_name() != "postgresql":
            raise ValueError("EVENT_BUS=postgres needs a PostgreSQL DATABASE_URL")
        return PostgresBus(database_url)
    if kind == "redis":
        return RedisBus(redis_url)
    return EventBus()


def create_publisher(event_bus: str, database_url: str, redis_url: str) -> EventBus | None:
    """What a process that only writes events (a session worker) publishes them on, or None.

    PostgreSQL's NOTIFY is sent by the event log's append itself, in its transaction, whoever writes;
    Redis needs a publisher in the writing process (it listens to nothing: `start` is not needed);
    the in-process bus reaches no other process, so a worker has nothing to publish on.
    """
    if bus_kind(event_bus, database_url) == "redis":
        return RedisBus(redis_url)
    return None


Notifier = Callable[[str, str], Awaitable[None]]
