"""Start and stop the optimization runtime with the API (called from api.main's lifespan).

`start(app)`: opens the checkpointer, creates the event log, the runner and the in-process executor
(on `app.state`), and resubmits sessions a dead process left `queued` or `running`: they resume from
their checkpoints. `stop(app)`: stops the tasks (their sessions stay `running` and resume at the next
start) and closes the checkpointer.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from fastapi import FastAPI
from sqlmodel import col, select

from agents import compute
from agents.executor import InProcessExecutor
from agents.runner import SessionRunner
from state.checkpoints import open_checkpointer
from state.event_log import EventLog
from state.sessions import OptimizationSession

log = logging.getLogger("robopt.agents")


async def start(app: FastAPI) -> None:
    settings = app.state.settings
    compute.configure(nice=settings.compute_nice, workers=settings.max_concurrent_sessions)
    stack = AsyncExitStack()
    checkpointer = await open_checkpointer(settings, stack)
    events = EventLog(app.state.sessionmaker)
    runner = SessionRunner(
        settings=settings,
        sessionmaker=app.state.sessionmaker,
        store=app.state.store,
        events=events,
        checkpointer=checkpointer,
    )
    executor = InProcessExecutor(runner.run, settings.max_concurrent_sessions)
    app.state.runtime_stack = stack
    app.state.events = events
    app.state.runner = runner
    app.state.executor = executor
    async with app.state.sessionmaker() as db:
        rows = (
            await db.exec(
                select(OptimizationSession)
                .where(col(OptimizationSession.status).in_(("queued", "running")))
                .order_by(col(OptimizationSession.created_at))
            )
        ).all()
    for row in rows:
        log.info("resuming session %s (was %s)", row.id, row.status)
        executor.submit(row.id)


async def stop(app: FastAPI) -> None:
    executor = getattr(app.state, "executor", None)
    if executor is not None:
        await executor.shutdown()
    stack = getattr(app.state, "runtime_stack", None)
    if stack is not None:
        await stack.aclose()
    compute.reset()
