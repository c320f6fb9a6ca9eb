"""Small hot reads (the status poll's one row) without the async driver's thread hops, on SQLite.

aiosqlite runs every call on a helper thread: a one-row primary-key read costs about 0.6 ms of CPU
in hops and futures, for a query SQLite answers in microseconds. In WAL mode a reader never waits
for the writer, so on SQLite the read runs synchronously on the caller's thread through a small
sync engine (about 0.1 ms), with no busy timeout at all: should SQLite answer "busy" (a WAL
recovery), the read goes through the async engine instead, which may wait off the event loop.
Other databases use the async engine.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Row
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

from state.db import is_sqlite, sync_url

BUSY_TIMEOUT_MS = 0  # never wait on a lock here: this read runs on the event loop


class FastReader:
    def __init__(self, url: str, async_engine: AsyncEngine) -> None:
        self._async = async_engine
        self._sync: Engine | None = None
        if is_sqlite(url):
            # No rollback on return: a query_only connection never holds a transaction after a read.
            self._sync = create_engine(
                sync_url(url), pool_size=2, max_overflow=2, pool_reset_on_return=None
            )

            @event.listens_for(self._sync, "connect")
            def _pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                cur.execute("PRAGMA query_only=ON")  # this engine only ever reads
                cur.close()

    async def first(self, statement: Executable, params: dict[str, Any]) -> Row[Any] | None:
        if self._sync is not None:
            try:
                with self._sync.connect() as conn:
                    return conn.execute(statement, params).first()
            except OperationalError:
                pass  # busy: take the async path, which may wait
        async with self._async.connect() as conn:
            return (await conn.execute(statement, params)).first()

    def dispose(self) -> None:
        if self._sync is not None:
            self._sync.dispose()
