"""Start and stop the optimization runtime with the API (called from api.main's lifespan).

`start(app)`: opens the checkpointer, creates the event log, the runner and the executor that
EXECUTOR names (on `app.state`), and resubmits sessions a dead process left `queued` or `running`:
they resume from their checkpoints, once the run table says their last attempt is over.
`stop(app)`: stops the executor (its sessions stay `running` and resume at the next start) and
closes the checkpointer.

The API's own runner serves requests about sessions (rollback of a finished one); the sessions
themselves run where the executor puts them (agents/executor.py).
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from fastapi import FastAPI
from sqlmodel import col, select

from agents import compute
from agents.executor import create_executor
from agents.runner import SessionRunner
from agents.worker import fence_checkpoints, run_attempt
from state.checkpoints import open_checkpointer
from state.event_log import EventLog
from state.runs import install_fencing, worker_identity
from state.sessions import OptimizationSession

log = logging.getLogger("robopt.agents")


async def start(app: FastAPI) -> None:
    settings = app.state.settings
    if settings.executor == "inprocess":
        compute.configure(nice=settings.compute_nice, workers=settings.max_concurrent_sessions)
    install_fencing()
    stack = AsyncExitStack()
    checkpointer = fence_checkpoints(await open_checkpointer(settings, stack))
    events = EventLog(app.state.sessionmaker)
    runner = SessionRunner(
        settings=settings,
        sessionmaker=app.state.sessionmaker,
        store=app.state.store,
        events=events,
        checkpointer=checkpointer,
    )
    worker_id = worker_identity("inprocess")

    async def attempt(session_id: str) -> str:
        return await run_attempt(runner, settings, session_id, worker_id)

    executor = create_executor(settings, app.state.sessionmaker, attempt, runner.abandon)
    await executor.start()
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
