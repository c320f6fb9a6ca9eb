"""Shared schema pieces: UTC timestamps and pagination."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive values; the API always states the zone.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class PageMeta(BaseModel):
    total: int = Field(description="Items matching, over all pages.")
    limit: int
    offset: int
