"""Optimization sessions, their event log and their chat (tables; migrations 0002 to 0004).

The session row is what the API reads (status, progress, the latest results snapshot); the graph's
own state lives in the LangGraph checkpointer. Events are append-only with a per-session `seq`
that is also the SSE event id; `dedupe_key` lets a node that re-runs after a crash skip events it
already wrote.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from state.users import new_hex_id, utcnow

SESSION_STATUSES: tuple[str, ...] = ("queued", "running", "completed", "failed", "cancelled")
TERMINAL_STATUSES: tuple[str, ...] = ("completed", "failed", "cancelled")


class OptimizationSession(SQLModel, table=True):
    __tablename__ = "optimization_sessions"

    id: str = Field(default_factory=new_hex_id, primary_key=True, max_length=32)
    owner_id: str = Field(index=True, max_length=32)
    model_id: str = Field(index=True, max_length=32)
    status: str = Field(default="queued", index=True, max_length=16)
    planner: str = Field(default="rules", max_length=16)
    criteria: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    criteria_explicit: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    progress_percentage: float = Field(default=0.0)
    current_step: str | None = Field(default=None, max_length=200)
    trials_done: int = Field(default=0)
    best: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    results: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    selected_version: str | None = Field(default=None, max_length=32)
    result_model_id: str | None = Field(default=None, max_length=32)
    registered_versions: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    cancel_requested: bool = Field(default=False)
    # Rollbacks asked for while the session runs ({"request_id", "trial" | "version"}); the graph
    # applies them at its next step (or at the report) and they leave this list once checkpointed.
    pending_rollbacks: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )
    # The request's input_signature, when it gave one (else the model's own is used).
    input_signature: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    attempts: int = Field(default=0)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    started_at: datetime | None = Field(default=None)
    finished_at: datetime | None = Field(default=None)
    updated_at: datetime = Field(default_factory=utcnow)


class SessionEvent(SQLModel, table=True):
    __tablename__ = "session_events"
    __table_args__ = (
        UniqueConstraint("session_id", "seq", name="uq_session_events_session_seq"),
        Index("ix_session_events_session_key", "session_id", "dedupe_key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(
        foreign_key="optimization_sessions.id", index=True, max_length=32, ondelete="CASCADE"
    )
    seq: int
    type: str = Field(max_length=32)
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    dedupe_key: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class SessionMessage(SQLModel, table=True):
    __tablename__ = "session_messages"

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(
        foreign_key="optimization_sessions.id", index=True, max_length=32, ondelete="CASCADE"
    )
    role: str = Field(max_length=16)  # "user" | "assistant"
    content: str = Field(sa_column=Column(Text, nullable=False))
    consumed: bool = Field(default=False)  # a user message the planner has taken into account
    created_at: datetime = Field(default_factory=utcnow)
