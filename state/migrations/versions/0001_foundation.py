"""Foundation: users, revoked tokens, models.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("hashed_password", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_users_username", "users", ["username"], unique=True)

    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_revoked_tokens_user_id", "revoked_tokens", ["user_id"])
    op.create_index("ix_revoked_tokens_expires_at", "revoked_tokens", ["expires_at"])

    op.create_table(
        "models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner_id", sa.String(32), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.String(2000), nullable=True),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("extension", sa.String(16), nullable=False),
        sa.Column("original_filename", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("stored_path", sa.String(1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("architecture", sa.JSON(), nullable=True),
        sa.Column("input_spec", sa.JSON(), nullable=True),
        sa.Column("format_details", sa.JSON(), nullable=True),
        sa.Column("eval_data_path", sa.String(1024), nullable=True),
        sa.Column("eval_data_info", sa.JSON(), nullable=True),
        sa.Column("parent_model_id", sa.String(32), nullable=True),
        sa.Column("source_session_id", sa.String(32), nullable=True),
    )
    op.create_index("ix_models_owner_id", "models", ["owner_id"])
    op.create_index("ix_models_created_at", "models", ["created_at"])
    op.create_index("ix_models_parent_model_id", "models", ["parent_model_id"])
    op.create_index("ix_models_source_session_id", "models", ["source_session_id"])


def downgrade() -> None:
    op.drop_table("models")
    op.drop_table("revoked_tokens")
    op.drop_table("users")
