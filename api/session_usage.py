"""How the foundation sees optimization sessions (the table belongs to the agent, issue 4).

Two hooks the sessions code may replace or extend:
- `model_in_use(db, model_id)`: whether a queued or running session uses the model (DELETE -> 409).
- `session_counts(db, owner_id)`: counts by status for /monitoring/sessions/metrics and /monitoring/system.

Until the table `optimization_sessions` exists both answer "nothing" (False, no counts). Once it
exists they read its `status` column (and `model_id`, `owner_id` when present), so they work without
edits as long as those column names are used.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect, text
from sqlmodel.ext.asyncio.session import AsyncSession

SESSIONS_TABLE = "optimization_sessions"
ACTIVE_STATUSES = ("queued", "running")


async def _session_columns(db: AsyncSession) -> set[str] | None:
    def probe(sync_session: Any) -> set[str] | None:
        inspector = inspect(sync_session.connection())
        if not inspector.has_table(SESSIONS_TABLE):
            return None
        return {c["name"] for c in inspector.get_columns(SESSIONS_TABLE)}

    return await db.run_sync(probe)


async def model_in_use(db: AsyncSession, model_id: str) -> bool:
    """True while a queued or running optimization session uses `model_id`."""
    columns = await _session_columns(db)
    if not columns or not {"model_id", "status"} <= columns:
        return False
    row = (
        await db.execute(
            text(
                f"SELECT 1 FROM {SESSIONS_TABLE} WHERE model_id = :model_id "
                "AND status IN ('queued', 'running') LIMIT 1"
            ),
            {"model_id": model_id},
        )
    ).first()
    return row is not None


async def session_counts(db: AsyncSession, owner_id: str | None = None) -> dict[str, int] | None:
    """Sessions per status (only `owner_id`'s when given); None while the table does not exist."""
    columns = await _session_columns(db)
    if columns is None or "status" not in columns:
        return None
    where, params = "", {}
    if owner_id is not None and "owner_id" in columns:
        where, params = "WHERE owner_id = :owner_id", {"owner_id": owner_id}
    rows = (
        await db.execute(
            text(f"SELECT status, COUNT(*) FROM {SESSIONS_TABLE} {where} GROUP BY status"), params
        )
    ).all()
    return {str(status): int(count) for status, count in rows}


def active_count(counts: dict[str, int] | None) -> int:
    return sum((counts or {}).get(s, 0) for s in ACTIVE_STATUSES)
