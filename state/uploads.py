"""Resumable (tus 1.0) uploads in progress: one row per upload, its bytes in DATA_DIR/uploads/resumable/."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field, SQLModel

from state.users import new_hex_id, utcnow


class ResumableUpload(SQLModel, table=True):
    __tablename__ = "resumable_uploads"

    id: str = Field(default_factory=new_hex_id, primary_key=True, max_length=32)
    owner_id: str = Field(foreign_key="users.id", index=True, max_length=32)
    length: int = Field(sa_column=Column(BigInteger, nullable=False))  # Upload-Length, fixed at creation
    # Bytes acknowledged: the file holds at least these; anything beyond is cut off before the next write.
    offset: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    upload_metadata: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    filename: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)
    completed_at: datetime | None = Field(default=None)
    sha256: str | None = Field(default=None, max_length=64)
