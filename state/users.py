"""Users and the denylist of revoked access tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from sqlmodel import Field, SQLModel

Role = Literal["admin", "user"]
ROLES: tuple[str, ...] = ("admin", "user")


def utcnow() -> datetime:
    """Aware UTC (SQLModel's datetime columns refuse naive values and read back UTC)."""
    return datetime.now(UTC)


def new_hex_id() -> str:
    import uuid

    return uuid.uuid4().hex


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: str = Field(default_factory=new_hex_id, primary_key=True, max_length=32)
    username: str = Field(index=True, unique=True, max_length=64)
    hashed_password: str = Field(max_length=255)
    role: str = Field(default="user", max_length=16)
    is_active: bool = Field(default=True)
    created_at: datetime = Field(default_factory=utcnow)


class RevokedToken(SQLModel, table=True):
    """A logged-out token's `jti`, kept until the token would have expired anyway."""

    __tablename__ = "revoked_tokens"

    jti: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(index=True, max_length=32)
    expires_at: datetime = Field(index=True)
    revoked_at: datetime = Field(default_factory=utcnow)
