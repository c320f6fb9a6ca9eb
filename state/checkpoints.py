"""The LangGraph checkpointer for sessions: AsyncSqliteSaver by default, AsyncPostgresSaver with PostgreSQL.

With SQLite the checkpoints go to their own file (DATA_DIR/checkpoints.sqlite) so that the
checkpointer's writes never contend with the API's database lock; with PostgreSQL they share the
DATABASE_URL database (the saver creates its own tables in `setup`).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from state.db import is_sqlite
from state.settings import Settings


def checkpoint_path(settings: Settings) -> Path:
    return settings.data_dir / "checkpoints.sqlite"


def _libpq_url(url: str) -> str:
    """postgresql+psycopg://... -> postgresql://... (psycopg's own connection string)."""
    u = make_url(url)
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


async def open_checkpointer(settings: Settings, stack: AsyncExitStack) -> Any:
    """A ready checkpointer whose connection closes with `stack`."""
    url = settings.resolved_database_url
    if is_sqlite(url):
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        path = checkpoint_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(str(path), timeout=30)
        stack.push_async_callback(conn.close)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        saver = AsyncSqliteSaver(conn)
        await saver.setup()
        return saver
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    saver = await stack.enter_async_context(AsyncPostgresSaver.from_conn_string(_libpq_url(url)))
    await saver.setup()
    return saver
