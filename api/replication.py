"""What several API replicas share besides the database: the event bus, and the auth cache it keeps right.

`start(app)` opens the bus (EVENT_BUS, state/event_bus.py), the auth cache (api/auth_cache.py)
whose invalidations travel on it, and the hot-read path (state/fast_reads.py);
`attach_event_log(app)` wakes the event log's SSE subscribers when another process appended to
their session; `stop(app)` closes the bus.
"""

from __future__ import annotations

from fastapi import FastAPI

from api.auth_cache import AuthCache
from state.event_bus import AUTH_CHANNEL, EVENTS_CHANNEL, create_event_bus
from state.fast_reads import FastReader
from state.settings import Settings


async def start(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    bus = create_event_bus(settings.event_bus, settings.resolved_database_url, settings.redis_url)
    await bus.start()
    cache = AuthCache(settings.auth_cache_ttl_s, publish=bus.publish if bus.cross_process else None)
    bus.on(AUTH_CHANNEL, cache.on_message)
    bus.on_reconnect(cache.clear)  # invalidations may have been missed while disconnected
    app.state.bus = bus
    app.state.auth_cache = cache
    app.state.fast_reader = FastReader(settings.resolved_database_url, app.state.engine)


def attach_event_log(app: FastAPI) -> None:
    """Hook the runtime's event log (app.state.events, once the runtime started) to the bus."""
    events = getattr(app.state, "events", None)
    bus = app.state.bus
    if events is None:
        return
    events.reread_s = app.state.settings.event_reread_s
    bus.on(EVENTS_CHANNEL, lambda payload: events.wake(payload.partition(":")[0]))
    bus.on_reconnect(events.wake_all)
    if bus.kind == "redis":  # PostgreSQL's NOTIFY is sent by the append itself
        events.notifier = bus.publish


async def stop(app: FastAPI) -> None:
    bus = getattr(app.state, "bus", None)
    if bus is not None:
        await bus.stop()
    reader = getattr(app.state, "fast_reader", None)
    if reader is not None:
        reader.dispose()
