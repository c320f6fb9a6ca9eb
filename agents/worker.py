"""One attempt at a session, wherever it runs: claim it in the run table, keep the lease, run it fenced.

Every executor runs sessions through `run_attempt`. It claims the session's next attempt
(state/runs.py; while another attempt holds a live lease it waits at most until that lease
expires, and leaves the session to a holder that renews it), renews the lease every
RUN_HEARTBEAT_S and takes cancel and rollback requests from the session row (the API may be
another process or machine), and runs the session with the attempt's fence in its context, so that
every write it makes checks that the attempt is still the active one. A worker that finds its lease
gone stops at once and writes nothing more.

`process_main` is a worker process's entry (the default executor starts one per session with the
spawn method); `ray_session` is the Ray task's. Both open their own engine, checkpointer and event
log from the settings they are given; neither imports anything of the API. This module imports no
torch: the API imports it for the executors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from contextlib import AsyncExitStack
from typing import Any

from agents.runner import SessionRunner
from state import runs
from state.runs import Claim, LeaseLost, RunFence, current_fence
from state.settings import Settings

log = logging.getLogger("robopt.agents")

EXIT_DONE = 0  # finished, or left to another holder, or lost to one: nothing for the parent to do
EXIT_INTERRUPTED = 3  # stopped by SIGTERM; the lease was released, the checkpoint stays
EXIT_FAILED = 4  # the attempt crashed (logged); the session resumes from its checkpoint
EXIT_ORPHANED = 5  # the parent was gone before the worker started


async def claim_session(
    runner: SessionRunner, settings: Settings, session_id: str, worker_id: str
) -> Claim | None:
    """The session's next attempt for `worker_id`, or None: the session is gone, or a live worker has it.

    A held lease is watched until it expires (its worker died) and then taken over; a holder that
    renews it meanwhile is alive and keeps the session.
    """
    watched: tuple[int, Any] | None = None
    while True:
        got = await runs.claim(runner.sessionmaker, session_id, worker_id, settings.run_lease_s)
        if got is None or isinstance(got, Claim):
            return got
        if got.attempt == 0:  # another claim of it is under way
            await asyncio.sleep(0.2)
            continue
        beat = (got.attempt, got.heartbeat_at)
        if watched is None:
            watched = beat
            log.info(
                "session %s: attempt %d (%s) holds it until %s; waiting",
                session_id,
                got.attempt,
                got.worker_id,
                got.lease_expires_at,
            )
        elif beat != watched:
            log.info("session %s: attempt %d is alive; leaving the session to it", session_id, got.attempt)
            return None
        assert got.lease_expires_at is not None
        left = (got.lease_expires_at - runs.utcnow()).total_seconds()
        await asyncio.sleep(min(max(0.2, left), settings.run_heartbeat_s))


async def _keep_lease(
    runner: SessionRunner, settings: Settings, fence: RunFence, attempt_task: asyncio.Task[Any]
) -> None:
    """Renew the lease; take cancel/rollback requests from the row; stop the attempt once it is lost."""
    loop = asyncio.get_running_loop()
    poll = min(1.0, settings.run_heartbeat_s)
    renewed = loop.time()
    while True:
        await asyncio.sleep(poll)
        try:
            if loop.time() - renewed >= settings.run_heartbeat_s:
                if not await runs.renew(runner.sessionmaker, fence.run_id, settings.run_lease_s):
                    fence.lost = True
                    log.warning(
                        "session %s: attempt %d was taken over; stopping it", fence.session_id, fence.attempt
                    )
                    attempt_task.cancel()
                    return
                renewed = loop.time()
            await runner.refresh_control(fence.session_id)
        except Exception as exc:  # noqa: BLE001 - a database hiccup: the next beat tries again
            log.warning("session %s: heartbeat failed: %s", fence.session_id, exc)
        if loop.time() - renewed > settings.run_lease_s:
            # Not renewed for a whole lease: another worker may own the session by now.
            fence.lost = True
            log.warning(
                "session %s: lease not renewed for %.0f s; stopping", fence.session_id, settings.run_lease_s
            )
            attempt_task.cancel()
            return


async def run_attempt(runner: SessionRunner, settings: Settings, session_id: str, worker_id: str) -> str:
    """Claim and run one attempt. Returns `finished`, `held` (nothing to do here) or `lost`; raises
    CancelledError when stopped (the lease is then released for the next claim)."""
    runs.install_fencing()
    claim = await claim_session(runner, settings, session_id, worker_id)
    if claim is None:
        return "held"
    fence = RunFence(runner.sessionmaker, claim.run_id, session_id, claim.attempt)
    token = current_fence.set(fence)
    me = asyncio.current_task()
    assert me is not None
    keeper = asyncio.create_task(_keep_lease(runner, settings, fence, me), name=f"lease-{session_id}")
    outcome = "interrupted"
    try:
        await runner.run(session_id, attempt=claim.attempt)
        outcome = "finished"
    except LeaseLost:
        outcome = "lost"
    except asyncio.CancelledError:
        if not fence.lost:
            raise
        me.uncancel()
        outcome = "lost"
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        current_fence.reset(token)
        runner.controls.pop(session_id, None)
        if not fence.lost:
            await runs.end(runner.sessionmaker, claim.run_id, outcome)
    return outcome


def fence_checkpoints(saver: Any) -> Any:
    """Make the checkpointer's writes check the attempt's fence first (the checkpoints live in another
    database with SQLite, so the check cannot share their transaction; the heartbeat covers the rest)."""
    if getattr(saver, "_robopt_fenced", False):
        return saver
    put, put_writes = saver.aput, saver.aput_writes

    async def check(config: Any) -> None:
        fence = current_fence.get()
        if fence is not None and (config or {}).get("configurable", {}).get("thread_id") == fence.session_id:
            await fence.check_now()

    async def aput(config: Any, *args: Any, **kwargs: Any) -> Any:
        await check(config)
        return await put(config, *args, **kwargs)

    async def aput_writes(config: Any, *args: Any, **kwargs: Any) -> Any:
        await check(config)
        return await put_writes(config, *args, **kwargs)

    saver.aput = aput
    saver.aput_writes = aput_writes
    saver._robopt_fenced = True
    return saver


async def run_in_worker(settings: Settings, session_id: str, worker_id: str) -> str:
    """A worker's whole run of one session: its own engine, checkpointer, event log and runner."""
    from state.artifacts import store_from_settings
    from state.checkpoints import open_checkpointer
    from state.db import create_engine_for, session_factory
    from state.event_bus import create_publisher
    from state.event_log import EventLog

    engine = create_engine_for(settings.resolved_database_url)
    # EVENT_BUS=redis: every event this worker appends is also published, so that the SSE streams of
    # every API replica wake at once (PostgreSQL's NOTIFY goes out with the append's transaction).
    bus = create_publisher(settings.event_bus, settings.resolved_database_url, settings.redis_url)
    try:
        async with AsyncExitStack() as stack:
            sessionmaker = session_factory(engine)
            runner = SessionRunner(
                settings=settings,
                sessionmaker=sessionmaker,
                store=store_from_settings(settings),  # ARTIFACT_STORE: shared storage across workers
                events=EventLog(sessionmaker, notifier=bus.publish if bus is not None else None),
                checkpointer=fence_checkpoints(await open_checkpointer(settings, stack)),
            )
            return await run_attempt(runner, settings, session_id, worker_id)
    finally:
        if bus is not None:
            await bus.stop()
        await engine.dispose()


def settings_payload(settings: Settings) -> dict[str, Any]:
    """What a worker rebuilds its settings from (plain JSON: it crosses a pipe or Ray's object store)."""
    return settings.model_dump(mode="json")


def _settings(payload: dict[str, Any]) -> Settings:
    return Settings(_env_file=None, **payload)  # type: ignore[call-arg]


def _set_torch_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch starts its OpenMP team
    import torch

    torch.set_num_threads(threads)


# -- a worker process (the default executor) -------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM when the API process dies (even by SIGKILL): no session runs on without its API."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before the line above
        os._exit(EXIT_ORPHANED)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=logging.DEBUG if level in ("debug", "trace") else getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s [worker %(process)d] %(message)s",
        stream=sys.stderr,
    )


async def _process_attempt(settings: Settings, session_id: str, worker_id: str) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        outcome = await run_in_worker(settings, session_id, worker_id)
    except asyncio.CancelledError:
        log.info("session %s: worker stopped; it resumes from its checkpoint", session_id)
        return EXIT_INTERRUPTED
    log.info("session %s: worker done (%s)", session_id, outcome)
    return EXIT_DONE


def process_main(payload: dict[str, Any], session_id: str, nonce: str, parent_pid: int) -> None:
    """Entry of a session's worker process (multiprocessing, spawn). Exits with one of EXIT_*."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the API's to handle
    settings = _settings(payload)
    if settings.compute_nice > 0 and sys.platform.startswith("linux"):
        # The whole process, before it starts any thread: the API's event loop wins the CPU.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, max(settings.compute_nice, os.getpriority(os.PRIO_PROCESS, 0)))
    _configure_logging(settings.api_log_level)
    code = EXIT_FAILED
    try:
        _set_torch_threads(settings.session_torch_threads)
        from agents import compute

        compute.configure(nice=0, workers=1)  # one compute thread: one OpenMP team per session
        worker_id = runs.worker_identity("process", nonce=nonce)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        code = loop.run_until_complete(_process_attempt(settings, session_id, worker_id))
    except BaseException:  # noqa: BLE001 - logged; the parent sees the exit code
        log.exception("session %s: worker crashed", session_id)
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # Not a normal interpreter exit: a tool call still running on a compute thread must not keep
        # the process (and its session's resources) alive after the attempt has ended.
        os._exit(code)


# -- a Ray task (EXECUTOR=ray) ---------------------------------------------------------------------


def ray_session(payload: dict[str, Any], session_id: str) -> str:
    """A Ray task's body: one attempt at the session on this Ray worker (retried by Ray if it dies)."""
    settings = _settings(payload)
    _configure_logging(settings.api_log_level)
    _set_torch_threads(max(1, int(settings.ray_num_cpus)))
    from agents import compute

    compute.configure(nice=0, workers=1)
    try:
        return asyncio.run(run_in_worker(settings, session_id, runs.worker_identity("ray")))
    finally:
        compute.reset()
