"""Where a session's compute runs: a dedicated thread pool whose threads have a lower CPU priority.

The API's event loop shares the machine with the sessions it serves. On a small machine a session's
tool calls (benchmarks, quantization, exports) would take every core and status polls would queue
behind them. Compute threads lower their own priority (`COMPUTE_NICE`) before they run anything, so
the OpenMP and ONNX Runtime worker threads they start inherit it (Linux threads inherit their
creator's nice value), and the event loop wins the CPU whenever it has work. Benchmarks inside a
session still see the whole machine when it is otherwise idle: niceness only matters under contention.

The pool exists only once the server configures it. `optimize_local` (the eval harness) runs compute
inline on its own thread; `optimize_local_async` from other code uses plain `asyncio.to_thread`,
whose threads end with their event loop. Why it matters: a thread that ran torch
keeps an OpenMP team alive, and two live teams on a small machine put libgomp in its throttled
mode, which slows every later small torch call in the process (measured: 40 us -> 200 us per call
of a 512-wide MLP on 2 cores). The server's pool has one thread per concurrent session for the same
reason: a session's compute always runs on the same thread, so its benchmarks stay comparable.
The API's own torch work (validating an upload) goes through `run_isolated`, on a thread that ends
with the call. Without that, a validated upload made the next session's float baseline look 2-4x
slower than it is and its ONNX candidates' speedups as much larger (the demo reported 8.9x where
1.2x is true). Two sessions at once still run two teams, and their measurements pay for it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

log = logging.getLogger("robopt.agents")

P = ParamSpec("P")
T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None  # set by the server: `configure` at start, `reset` at stop
# Set by `optimize_local`'s blocking wrapper: the event loop is its own, so compute runs inline on
# the caller's thread, the thread that also loads the model and measures it afterwards.
inline: contextvars.ContextVar[bool] = contextvars.ContextVar("robopt_compute_inline", default=False)


def configure(*, nice: int, workers: int) -> None:
    """Run compute on a pool of `workers` threads at nice value `nice` (the server, at start-up)."""
    global _pool
    old, _pool = (
        _pool,
        ThreadPoolExecutor(
            max_workers=max(1, workers),
            thread_name_prefix="robopt-compute",
            initializer=_lower_priority,
            initargs=(nice,),
        ),
    )
    if old is not None:
        old.shutdown(wait=False)


def reset() -> None:
    """Back to `asyncio.to_thread` (the server, at shut-down); the pool's threads finish their work."""
    global _pool
    old, _pool = _pool, None
    if old is not None:
        old.shutdown(wait=False)


def _lower_priority(nice: int) -> None:
    if nice <= 0 or not sys.platform.startswith("linux"):
        return  # elsewhere PRIO_PROCESS with a thread id would renice the whole process
    try:
        tid = threading.get_native_id()
        # Never above the priority the server already runs at (raising it needs privileges).
        os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
    except OSError as exc:  # a container may forbid it; compute still runs, at normal priority
        log.warning("could not lower the compute threads' priority: %s", exc)


async def run_isolated(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn` on a thread of its own that ends with the call (torch work outside sessions).

    Validating an upload loads and runs the model; on a long-lived worker thread its OpenMP team
    would outlive the call and slow every session's torch measurements from then on (see above).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    ctx = contextvars.copy_context()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the awaiting request was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result = ctx.run(fn, *args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            loop.call_soon_threadsafe(deliver, None, exc)
        else:
            loop.call_soon_threadsafe(deliver, result, None)

    threading.Thread(target=target, name="robopt-isolated", daemon=True).start()
    return await future


async def run(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`asyncio.to_thread` on the compute pool (context variables carried along the same way)."""
    if inline.get():
        return fn(*args, **kwargs)
    pool = _pool
    if pool is None:
        return await asyncio.to_thread(fn, *args, **kwargs)
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool, call)
