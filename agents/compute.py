"""Where a session's compute runs: a dedicated thread pool whose threads have a lower CPU priority.

The API's event loop shares the machine with the sessions it serves. On a small machine a session's
tool calls (benchmarks, quantization, exports) would take every core and status polls would queue
behind them. Compute threads lower their own priority (`COMPUTE_NICE`) before they run anything, so
the OpenMP and ONNX Runtime worker threads they start inherit it (Linux threads inherit their
creator's nice value), and the event loop wins the CPU whenever it has work. Benchmarks inside a
session still see the whole machine when it is otherwise idle: niceness only matters under contention.
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

_pool: ThreadPoolExecutor | None = None
_nice = 0
_workers = 4
_lock = threading.Lock()


def configure(*, nice: int, workers: int) -> None:
    """Set the priority and size of the pool; takes effect for threads started afterwards."""
    global _nice, _workers, _pool
    with _lock:
        _nice, _workers = nice, max(1, workers)
        old, _pool = _pool, None
    if old is not None:
        old.shutdown(wait=False)


def _lower_priority() -> None:
    if _nice <= 0 or not sys.platform.startswith("linux"):
        return  # elsewhere PRIO_PROCESS with a thread id would renice the whole process
    try:
        tid = threading.get_native_id()
        # Never above the priority the server already runs at (raising it needs privileges).
        os.setpriority(os.PRIO_PROCESS, tid, max(_nice, os.getpriority(os.PRIO_PROCESS, tid)))
    except OSError as exc:  # a container may forbid it; compute still runs, at normal priority
        log.warning("could not lower the compute threads' priority: %s", exc)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=_workers, thread_name_prefix="robopt-compute", initializer=_lower_priority
            )
        return _pool


async def run(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`asyncio.to_thread` on the compute pool (context variables carried along the same way)."""
    ctx = contextvars.copy_context()
    call = functools.partial(ctx.run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_executor(), call)
