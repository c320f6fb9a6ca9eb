"""The session compute pool: work runs off the event loop, on threads of lower CPU priority."""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import threading

import pytest

from agents import compute

_marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


def _where() -> tuple[str, int, str]:
    tid = threading.get_native_id()
    return threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, tid), _marker.get()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux-only")
def test_compute_runs_on_niced_threads_with_the_callers_context() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    compute.configure(nice=7, workers=2)

    async def main() -> tuple[str, int, str]:
        _marker.set("from the caller")
        return await compute.run(_where)

    try:
        name, nice, marker = asyncio.run(main())
    finally:
        compute.configure(nice=0, workers=2)
    assert name.startswith("robopt-compute")
    assert nice == max(base, 7)  # the thread's own priority, not the process's
    assert os.getpriority(os.PRIO_PROCESS, 0) == base
    assert marker == "from the caller"


def test_compute_propagates_exceptions() -> None:
    def boom() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        asyncio.run(compute.run(boom))
