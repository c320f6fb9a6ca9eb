"""Executors run sessions; the run table (state/runs.py) says which attempt runs each one.

- `ProcessExecutor` (EXECUTOR=process, the default): each session in a worker process of its own,
  started with multiprocessing's spawn method when the session gets one of MAX_CONCURRENT_SESSIONS
  slots. The worker writes the session row, the events and the checkpoints itself; the API's event
  loop only waits for the process to exit. A worker that dies is replaced (its lease ended at once:
  its parent saw it die) and the session resumes from its checkpoint, up to RUN_MAX_ATTEMPTS runs.
- `RayExecutor` (EXECUTOR=ray): each session a Ray task on the cluster at RAY_ADDRESS, with
  RAY_NUM_CPUS CPUs and one GPU when the session's device is CUDA. Ray schedules, places and
  retries it (a dead worker's task runs again elsewhere and takes the session over once its lease
  is free).
- `InProcessExecutor` (EXECUTOR=inprocess): asyncio tasks in the API process, compute in threads;
  for tests that patch the process they run in.

All run a session through `agents.worker.run_attempt` (claim, lease, fence). The interface: submit a
session id, know whether it runs (or holds a slot), stop everything at shut-down.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import multiprocessing
import os
import uuid
from collections.abc import Awaitable, Callable
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from state import runs
from state.sessions import TERMINAL_STATUSES, OptimizationSession
from state.settings import Settings

log = logging.getLogger("robopt.agents")

STOP_GRACE_S = 10.0  # how long a worker has to release its lease at shut-down before SIGKILL
# Called when a session could not be run (its workers kept dying): the runner records the failure.
Abandon = Callable[[str, str], Awaitable[None]]


class Executor(Protocol):
    def submit(self, session_id: str) -> None: ...

    def is_running(self, session_id: str) -> bool: ...

    def is_started(self, session_id: str) -> bool: ...

    def active(self) -> list[str]: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


class _Slots(abc.ABC):
    """Submitted sessions as asyncio tasks, at most `max_concurrent` holding a slot at once."""

    def __init__(self, max_concurrent: int) -> None:
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

    @abc.abstractmethod
    async def _run(self, session_id: str) -> None:
        """Run the session to its end (in this process or a worker's)."""

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

    async def start(self) -> None:
        return None

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class InProcessExecutor(_Slots):
    """Asyncio tasks in this process (compute runs in threads): `run` is one attempt at a session."""

    def __init__(self, run: Callable[[str], Awaitable[Any]], max_concurrent: int = 1) -> None:
        super().__init__(max_concurrent)
        self._attempt = run

    async def _run(self, session_id: str) -> None:
        await self._attempt(session_id)

    async def shutdown(self) -> None:
        """Stop every task (each releases its lease); its session stays `running` until the next start."""
        await self._cancel_tasks()


async def _is_terminal(sessionmaker: async_sessionmaker[AsyncSession], session_id: str) -> bool:
    async with sessionmaker() as db:
        row = await db.get(OptimizationSession, session_id)
        return row is None or row.status in TERMINAL_STATUSES


async def _exit_code(process: BaseProcess) -> int | None:
    """Wait for the process to end without a thread: its sentinel becomes readable when it does."""
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    loop.add_reader(process.sentinel, lambda: ended.done() or ended.set_result(None))
    try:
        await ended
    finally:
        loop.remove_reader(process.sentinel)
    process.join()
    return process.exitcode


class ProcessExecutor(_Slots):
    """Each session in a worker process of its own (multiprocessing, spawn), one per slot."""

    def __init__(
        self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], abandon: Abandon
    ) -> None:
        super().__init__(settings.max_concurrent_sessions)
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._abandon = abandon
        self._context = multiprocessing.get_context("spawn")
        self._payload: dict[str, Any] | None = None
        self._processes: dict[str, BaseProcess] = {}
        self._closing = False

    def worker_pid(self, session_id: str) -> int | None:
        process = self._processes.get(session_id)
        return process.pid if process is not None else None

    async def _run(self, session_id: str) -> None:
        from agents.worker import EXIT_DONE, process_main, settings_payload

        if self._payload is None:
            self._payload = settings_payload(self._settings)
        for run in range(1, self._settings.run_max_attempts + 1):
            if self._closing or await _is_terminal(self._sessionmaker, session_id):
                return
            nonce = uuid.uuid4().hex[:8]
            process = self._context.Process(
                target=process_main,
                args=(self._payload, session_id, nonce, os.getpid()),
                name=f"robopt-session-{session_id[:8]}",
            )
            process.start()  # from the event loop's thread: the worker's parent-death signal follows it
            self._processes[session_id] = process
            try:
                code = await _exit_code(process)
            finally:
                self._processes.pop(session_id, None)
            if code == EXIT_DONE or self._closing:
                return
            # It died (a signal, a crash, the OOM killer): nobody else will end its lease.
            assert process.pid is not None
            await runs.expire_worker(self._sessionmaker, runs.worker_identity("process", process.pid, nonce))
            log.warning(
                "session %s: worker %s exited with %s (run %d of %d); starting another",
                session_id,
                process.pid,
                code,
                run,
                self._settings.run_max_attempts,
            )
        if not await _is_terminal(self._sessionmaker, session_id):
            await self._abandon(
                session_id,
                f"its worker process died {self._settings.run_max_attempts} times (see the server log)",
            )

    async def shutdown(self) -> None:
        """SIGTERM the workers (each releases its lease and exits), SIGKILL those still there after
        STOP_GRACE_S. Their sessions stay `running` and resume at the next start."""
        self._closing = True
        processes = [p for p in self._processes.values() if p.is_alive()]
        for process in processes:
            with contextlib.suppress(OSError):
                process.terminate()
        deadline = asyncio.get_running_loop().time() + STOP_GRACE_S
        for process in processes:
            left = deadline - asyncio.get_running_loop().time()
            await asyncio.to_thread(process.join, max(0.0, left))
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 5.0)
        await self._cancel_tasks()


class RayExecutor:
    """Each session a Ray task (`agents.worker.ray_session`) on the cluster at RAY_ADDRESS."""

    def __init__(
        self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], abandon: Abandon
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._abandon = abandon
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._refs: dict[str, Any] = {}
        self._remote: Any = None
        self._closing = False

    async def start(self) -> None:
        import ray

        from agents.worker import ray_session

        if not ray.is_initialized():
            # No RAY_ADDRESS: Ray's own rules (the RAY_ADDRESS variable, else a local cluster).
            await asyncio.to_thread(
                ray.init, address=self._settings.ray_address, namespace="robopt", log_to_driver=True
            )
        # A fresh worker process per session: no OpenMP team or memory carried from one to the next.
        self._remote = ray.remote(max_calls=1)(ray_session)
        resources = ray.cluster_resources()
        log.info("Ray executor on %s: %s", self._settings.ray_address or "a local cluster", resources)

    def submit(self, session_id: str) -> None:
        if session_id in self._tasks and not self._tasks[session_id].done():
            return
        task = asyncio.create_task(self._guarded(session_id), name=f"session-{session_id}")
        self._tasks[session_id] = task
        task.add_done_callback(lambda _t, sid=session_id: self._tasks.pop(sid, None))

    async def _wants_gpu(self, session_id: str) -> bool:
        import ray

        async with self._sessionmaker() as db:
            row = await db.get(OptimizationSession, session_id)
        device = ((row.criteria or {}) if row is not None else {}).get("device", "auto")
        if device == "auto":  # the worker resolves it: CUDA wherever the cluster has a GPU
            return float(ray.cluster_resources().get("GPU", 0)) >= 1
        return str(device).startswith("cuda")

    async def _run(self, session_id: str) -> None:
        from ray.exceptions import RayError

        from agents.worker import settings_payload

        if await _is_terminal(self._sessionmaker, session_id):
            return
        gpu = await self._wants_gpu(session_id)
        ref = self._remote.options(
            num_cpus=self._settings.ray_num_cpus,
            num_gpus=1 if gpu else 0,
            max_retries=self._settings.run_max_attempts - 1,  # on a dead worker or node; not on errors
            retry_exceptions=False,
            name=f"robopt-session-{session_id[:8]}",
        ).remote(settings_payload(self._settings), session_id)
        self._refs[session_id] = ref
        try:
            outcome = await ref
            log.info("session %s: Ray task done (%s)", session_id, outcome)
        except RayError as err:
            if self._closing:
                return
            log.error("session %s: Ray task failed: %s", session_id, err)
            if not await _is_terminal(self._sessionmaker, session_id):
                await self._abandon(
                    session_id, f"its Ray task failed: {type(err).__name__}: {str(err)[:500]}"
                )
        finally:
            self._refs.pop(session_id, None)

    async def _guarded(self, session_id: str) -> None:
        try:
            await self._run(session_id)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # could not even hand it to Ray: say so rather than stay `queued`
            log.exception("session %s: could not be submitted to Ray", session_id)
            await self._abandon(session_id, f"it could not be submitted to Ray: {type(err).__name__}: {err}")

    def is_running(self, session_id: str) -> bool:
        task = self._tasks.get(session_id)
        return task is not None and not task.done()

    def is_started(self, session_id: str) -> bool:
        """Handed to Ray: it starts the task when the cluster has room; a cancel reaches it there."""
        return self.is_running(session_id)

    def active(self) -> list[str]:
        return [sid for sid, t in self._tasks.items() if not t.done()]

    async def shutdown(self) -> None:
        """Disconnect from Ray. Ray ends the tasks this API owned; their sessions resume at the next start."""
        import ray

        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if ray.is_initialized():
            await asyncio.to_thread(ray.shutdown)


def create_executor(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    attempt: Callable[[str], Awaitable[Any]],
    abandon: Abandon,
) -> InProcessExecutor | ProcessExecutor | RayExecutor:
    """The executor EXECUTOR names (`attempt` runs one attempt in this process, for `inprocess`)."""
    if settings.executor == "inprocess":
        return InProcessExecutor(attempt, settings.max_concurrent_sessions)
    if settings.executor == "ray":
        return RayExecutor(settings, sessionmaker, abandon)
    return ProcessExecutor(settings, sessionmaker, abandon)
