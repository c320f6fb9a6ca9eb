"""The session event log: append with a monotonic `seq` per session, fan out to live subscribers.

Appends are serialized per session by an in-process lock (one runner per session at a time) and
protected by the (session_id, seq) unique constraint. Subscribers get every appended event on an
asyncio queue; a subscriber that falls behind by more than its queue holds is told to re-read the
database (the SSE endpoint replays from the log by seq anyway).

Across processes (API replicas, session workers): on PostgreSQL each append also sends
`NOTIFY robopt_events, '<session_id>:<seq>'` inside its own transaction, so the notification is
delivered exactly when the row is visible, whoever wrote it; with another bus (Redis) `notifier`
publishes the same after the commit. A replica's bus listener then calls `wake(session_id)`: its
subscribers re-read the log. The notification carries nothing else, so nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from state.event_bus import EVENTS_CHANNEL, Notifier
from state.sessions import SessionEvent

QUEUE_SIZE = 1000
SEQ_RETRIES = 8  # appends that lost the next seq to another process, tried again
log = logging.getLogger("robopt.events")


@dataclass(frozen=True)
class EventRecord:
    session_id: str
    seq: int
    type: str
    payload: dict[str, Any]
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.type,
            "payload": self.payload,
            "created_at": self.created_at.isoformat(),
        }


OVERFLOW = object()  # put on a subscriber's queue when it overflowed: re-read from the database
WAKE = object()  # another process appended: re-read from the database
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


class EventLog:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], notifier: Notifier | None = None
    ) -> None:
        self._sessionmaker = sessionmaker
        bind = sessionmaker.kw.get("bind")
        self._notify_in_transaction = bind is not None and bind.dialect.name == "postgresql"
        self.notifier = notifier  # a non-PostgreSQL bus's publish (EVENT_BUS=redis)
        self.reread_s = 1.0  # how long a quiet SSE stream waits before re-reading (EVENT_REREAD_S)
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._subscribers: dict[str, set[asyncio.Queue[Any]]] = defaultdict(set)

    async def has_key(self, session_id: str, dedupe_key: str) -> bool:
        """Whether an event with this `dedupe_key` was already written for the session."""
        async with self._sessionmaker() as db:
            seen = (
                await db.exec(
                    select(SessionEvent.seq).where(
                        SessionEvent.session_id == session_id, SessionEvent.dedupe_key == dedupe_key
                    )
                )
            ).first()
        return seen is not None

    async def append(
        self, session_id: str, type_: str, payload: dict[str, Any], *, dedupe_key: str | None = None
    ) -> EventRecord | None:
        """Persist one event and publish it; None when `dedupe_key` was already written.

        The lock serializes this process's appends; another process (the API's cancel while a worker
        writes, two replicas) may take the same next `seq` first: the unique constraint refuses the
        second, which then reads the new maximum and tries again.
        """
        async with self._locks[session_id]:
            for attempt in range(SEQ_RETRIES):
                try:
                    record = await self._insert(session_id, type_, payload, dedupe_key)
                    break
                except IntegrityError:
                    if attempt == SEQ_RETRIES - 1:
                        raise
                    await asyncio.sleep(0.01 * (attempt + 1))
            if record is None:
                return None
        self._publish(record)
        if self.notifier is not None:
            try:
                await self.notifier(EVENTS_CHANNEL, f"{session_id}:{record.seq}")
            except Exception as exc:  # noqa: BLE001 - the event is committed; a lost wake-up costs a delay
                log.warning("event %s:%d not published on the bus: %s", session_id, record.seq, exc)
        return record

    async def _insert(
        self, session_id: str, type_: str, payload: dict[str, Any], dedupe_key: str | None
    ) -> EventRecord | None:
        async with self._sessionmaker() as db:
            if dedupe_key is not None:
                seen = (
                    await db.exec(
                        select(SessionEvent.seq).where(
                            SessionEvent.session_id == session_id, SessionEvent.dedupe_key == dedupe_key
                        )
                    )
                ).first()
                if seen is not None:
                    return None
            last = (
                await db.exec(select(func.max(SessionEvent.seq)).where(SessionEvent.session_id == session_id))
            ).one()
            row = SessionEvent(
                session_id=session_id,
                seq=int(last or 0) + 1,
                type=type_,
                payload=payload,
                dedupe_key=dedupe_key,
            )
            db.add(row)
            if self._notify_in_transaction:
                conn = await db.connection()
                notice = {"channel": EVENTS_CHANNEL, "payload": f"{session_id}:{row.seq}"}
                await conn.execute(_NOTIFY, notice)
            await db.commit()
            return EventRecord(session_id, row.seq, row.type, row.payload, row.created_at)

    def wake(self, session_id: str) -> None:
        """Another process appended to this session: its subscribers here re-read the log."""
        for queue in list(self._subscribers.get(session_id, ())):
            self._put(queue, WAKE)

    def wake_all(self) -> None:
        """Notifications may have been missed (the bus reconnected): every subscriber re-reads."""
        for session_id in list(self._subscribers):
            self.wake(session_id)

    def _publish(self, record: EventRecord) -> None:
        for queue in list(self._subscribers.get(record.session_id, ())):
            self._put(queue, record)

    @staticmethod
    def _put(queue: asyncio.Queue[Any], item: Any) -> None:
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(OVERFLOW)

    @asynccontextmanager
    async def subscribe(self, session_id: str) -> AsyncIterator[asyncio.Queue[Any]]:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._subscribers[session_id].add(queue)
        try:
            yield queue
        finally:
            self._subscribers[session_id].discard(queue)
            if not self._subscribers[session_id]:
                self._subscribers.pop(session_id, None)

    async def read(self, session_id: str, after: int = 0, limit: int = 500) -> list[EventRecord]:
        async with self._sessionmaker() as db:
            rows = (
                await db.exec(
                    select(SessionEvent)
                    .where(SessionEvent.session_id == session_id, SessionEvent.seq > after)
                    .order_by(SessionEvent.seq)
                    .limit(limit)
                )
            ).all()
        return [EventRecord(r.session_id, r.seq, r.type, r.payload, r.created_at) for r in rows]

    async def count(self, session_id: str, type_: str | None = None) -> int:
        async with self._sessionmaker() as db:
            query = (
                select(func.count()).select_from(SessionEvent).where(SessionEvent.session_id == session_id)
            )
            if type_ is not None:
                query = query.where(SessionEvent.type == type_)
            return int((await db.exec(query)).one())
