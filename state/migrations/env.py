"""Alembic environment. The URL comes from `state.db.run_migrations` (the sync driver of DATABASE_URL)."""

from __future__ import annotations

import importlib.util

from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlmodel import SQLModel

import state.registry  # noqa: F401  (registers the tables on SQLModel.metadata)
import state.users  # noqa: F401

# Later issues add their own table modules; they are imported when present so autogenerate sees them.
for _module in ("state.sessions", "state.uploads", "state.runs"):
    if importlib.util.find_spec(_module) is not None:
        importlib.import_module(_module)

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        # Batch mode lets ALTER TABLE migrations work on SQLite too.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
