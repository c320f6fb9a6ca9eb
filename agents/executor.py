"""Executors run sessions. The default runs them as asyncio tasks in this process.

The interface is what a distributed executor (Ray tasks on GPU workers, with the session table as
the source of truth) would implement: submit a session id, ask it to stop, know whether it runs here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger("robopt.agents")


class Executor(Protocol):
    def submit(self, session_id: str) -> None: ...

    def is_running(self, session_id: str) -> bool: ...

    def is_started(self, session_id: str) -> bool: ...

    def active(self) -> list[str]: ...

    async def shutdown(self) -> None: ...


class InProcessExecutor:
    """Asyncio tasks, at most `max_concurrent` sessions computing at once (compute runs in threads)."""

    def __init__(self, run: Callable[[str], Awaitable[None]], max_concurrent: int = 1) -> None:
        self._run = run
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started: set[str] = set()  # sessions holding a slot (the others wait, `queued`)

    def submit(self, session_id: str) -> None:
        if session_id in self._tasks and not self._tasks[session_id].done():
            return
        task = asyncio.create_task(self._guarded(session_id), name=f"session-{session_id}")
        self._tasks[session_id] = task
        task.add_done_callback(lambda _t, sid=session_id: self._tasks.pop(sid, None))

    async def _guarded(self, session_id: str) -> None:
        async with self._slots:
            self._started.add(session_id)
            try:
                await self._run(session_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # the runner records failures itself; this is the last line of defence
                log.exception("session %s crashed in the executor", session_id)
            finally:
                self._started.discard(session_id)

    def is_running(self, session_id: str) -> bool:
        task = self._tasks.get(session_id)
        return task is not None and not task.done()

    def is_started(self, session_id: str) -> bool:
        """True once the session holds a slot; a submitted session waiting for one is not started."""
        return session_id in self._started and self.is_running(session_id)

    def active(self) -> list[str]:
        return [sid for sid, t in self._tasks.items() if not t.done()]

    async def wait(self, session_id: str) -> None:
        task = self._tasks.get(session_id)
        if task is not None:
            await asyncio.shield(task)

    async def shutdown(self) -> None:
        """Stop every task. Their sessions stay `running` in the database and resume at the next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
