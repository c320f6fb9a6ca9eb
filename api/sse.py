"""Server-sent events of a session: replay from the event log, then live events, until `end`.

Each event's SSE `id` is its `seq` in the persisted log, so a client that reconnects with
`Last-Event-ID` gets exactly what it missed. Live events arrive through the event log's in-process
fan-out; events written by another process (a session worker, another API replica) arrive as a
wake-up from the event bus (state/event_bus.py), after which the log is re-read. The log is also
re-read when the queue overflowed, and when it was quiet for EVENT_REREAD_S (a safety net). The
stream ends after an `end` event once nothing follows it. Disconnecting only ends this generator;
the session runs on in its own task.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from state.event_log import OVERFLOW, WAKE, EventLog, EventRecord
from state.sessions import TERMINAL_STATUSES, OptimizationSession


def _sse(record: EventRecord) -> dict[str, Any]:
    body = {
        "seq": record.seq,
        "type": record.type,
        "created_at": record.created_at.isoformat(),
        **record.payload,
    }
    return {"id": str(record.seq), "event": record.type, "data": json.dumps(body, default=str)}


async def session_events(
    events: EventLog, sessionmaker: Any, session_id: str, last_id: int = 0
) -> AsyncIterator[dict[str, Any]]:
    last = last_id
    async with events.subscribe(session_id) as queue:
        while True:
            # Replay (and catch-up) from the log first; the queue then only adds what is newer.
            ended = False
            for record in await events.read(session_id, after=last):
                last = record.seq
                yield _sse(record)
                ended = record.type == "end"
            if ended and await _terminal(sessionmaker, session_id):
                more = await events.read(session_id, after=last, limit=1)
                if not more:
                    return
                continue
            try:
                item = await asyncio.wait_for(queue.get(), timeout=events.reread_s)
            except TimeoutError:
                continue
            if item is OVERFLOW or item is WAKE:
                continue
            if isinstance(item, EventRecord) and item.seq == last + 1:
                last = item.seq
                yield _sse(item)
                if item.type == "end" and await _terminal(sessionmaker, session_id):
                    if not await events.read(session_id, after=last, limit=1):
                        return


async def _terminal(sessionmaker: Any, session_id: str) -> bool:
    async with sessionmaker() as db:
        row = await db.get(OptimizationSession, session_id)
        return row is None or row.status in TERMINAL_STATUSES
