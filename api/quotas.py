"""Per-user quotas (OWASP API4, unrestricted resource consumption): storage, model count, active and
queued sessions, live SSE connections. Each refusal names the limit and the user's current use.

Counts come from the database at the moment of the request (no counters to drift after a crash);
SSE connections are live state of this process, counted here.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.errors import ApiError
from api.log import security_event
from api.resumable import storage_used
from state.registry import ModelRecord
from state.sessions import OptimizationSession
from state.settings import Settings
from state.users import User


async def check_model_quota(db: AsyncSession, user: User, settings: Settings, adding_bytes: int = 0) -> None:
    """Refuse a new model past the user's model count (429) or storage quota (413)."""
    count = (
        await db.exec(select(func.count()).select_from(ModelRecord).where(ModelRecord.owner_id == user.id))
    ).one()
    if count >= settings.user_max_models:
        security_event("model_quota_exceeded", user_id=user.id, models=count)
        raise ApiError(
            429,
            "quota_exceeded",
            f"You have {count} models, the most one user may keep; delete some before uploading more",
            {"max_models": settings.user_max_models, "models": count},
        )
    used = await storage_used(db, user.id)
    if used + adding_bytes > settings.user_storage_quota_bytes:
        security_event("storage_quota_exceeded", user_id=user.id, used=used, declared=adding_bytes)
        raise ApiError(
            413,
            "quota_exceeded",
            "This upload would exceed your storage quota",
            {
                "quota_bytes": settings.user_storage_quota_bytes,
                "used_bytes": used,
                "declared_bytes": adding_bytes,
            },
        )


async def check_session_quota(db: AsyncSession, user: User, settings: Settings) -> None:
    """Refuse a new session past the user's active (queued or running) or queued sessions (429)."""
    rows = (
        await db.exec(
            select(OptimizationSession.status, func.count())
            .where(OptimizationSession.owner_id == user.id)
            .where(col(OptimizationSession.status).in_(("queued", "running")))
            .group_by(OptimizationSession.status)
        )
    ).all()
    by_status = {status: int(n) for status, n in rows}
    queued, active = by_status.get("queued", 0), sum(by_status.values())
    details = {
        "max_active_sessions": settings.user_max_active_sessions,
        "max_queued_sessions": settings.user_max_queued_sessions,
        "queued": queued,
        "active": active,
    }
    if queued >= settings.user_max_queued_sessions:
        security_event("session_quota_exceeded", user_id=user.id, **details)
        raise ApiError(
            429, "quota_exceeded", f"You already have {queued} sessions waiting to run; retry later", details,
            headers={"Retry-After": "30"},
        )  # fmt: skip
    if active >= settings.user_max_active_sessions:
        security_event("session_quota_exceeded", user_id=user.id, **details)
        raise ApiError(
            429, "quota_exceeded", f"You already have {active} sessions queued or running; retry later",
            details, headers={"Retry-After": "30"},
        )  # fmt: skip


class SseConnections:
    """Live event streams per user in this process; `acquire` refuses past the limit (429)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, user_id: str) -> None:
        with self._lock:
            n = self._open.get(user_id, 0)
            if n >= self.limit:
                security_event("sse_quota_exceeded", user_id=user_id, open=n)
                raise ApiError(
                    429,
                    "quota_exceeded",
                    f"You already have {n} live event streams open; close one first",
                    {"max_sse_connections": self.limit, "open": n},
                    headers={"Retry-After": "5"},
                )
            self._open[user_id] = n + 1

    def release(self, user_id: str) -> None:
        with self._lock:
            n = self._open.get(user_id, 0) - 1
            if n > 0:
                self._open[user_id] = n
            else:
                self._open.pop(user_id, None)

    def open_for(self, user_id: str) -> int:
        return self._open.get(user_id, 0)

    async def guard(self, user_id: str, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """`stream`, with the slot acquired before (by the caller) released when it ends or is dropped."""
        try:
            async for item in stream:
                yield item
        finally:
            self.release(user_id)
