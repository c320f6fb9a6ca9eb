"""Shared schema pieces: UTC timestamps and pagination."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive values; the API always states the zone.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


# Pagination caps: a page holds at most MAX_PAGE_LIMIT items; an offset past MAX_PAGE_OFFSET is refused
# with 422 (a huge one overflowed the database's integer type: a 500 found by schemathesis).
MAX_PAGE_LIMIT = 100
MAX_PAGE_OFFSET = 1_000_000


class PageMeta(BaseModel):
    total: int = Field(description="Items matching, over all pages.")
    limit: int
    offset: int
