"""A session may carry the input signature its request gave (it completes or overrides the model's).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("optimization_sessions") as batch:
        batch.add_column(sa.Column("input_signature", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("optimization_sessions") as batch:
        batch.drop_column("input_signature")
