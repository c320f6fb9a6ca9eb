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
        compute.reset()
    assert name.startswith("robopt-compute")
    assert nice == max(base, 7)  # the thread's own priority, not the process's
    assert os.getpriority(os.PRIO_PROCESS, 0) == base
    assert marker == "from the caller"


@pytest.mark.parametrize("pooled", [False, True])
def test_compute_propagates_exceptions(pooled: bool) -> None:
    def boom() -> None:
        raise ValueError("bad input")

    if pooled:
        compute.configure(nice=0, workers=1)
    try:
        with pytest.raises(ValueError, match="bad input"):
            asyncio.run(compute.run(boom))
    finally:
        compute.reset()


def test_without_the_server_compute_is_plain_to_thread() -> None:
    """Outside the server (eval harness, optimize_local) no pool thread outlives the event loop."""
    name, _, _ = asyncio.run(compute.run(_where))
    assert not name.startswith("robopt-compute")


def test_isolated_calls_run_on_a_thread_that_ends_with_them() -> None:
    seen: list[threading.Thread] = []

    def work(x: int) -> int:
        seen.append(threading.current_thread())
        return x * 2

    def boom() -> None:
        raise KeyError("missing")

    async def main() -> int:
        _marker.set("carried")
        result = await compute.run_isolated(work, 21)
        with pytest.raises(KeyError, match="missing"):
            await compute.run_isolated(boom)
        return result

    assert asyncio.run(main()) == 42
    (thread,) = seen
    assert thread.name == "robopt-isolated" and thread is not threading.main_thread()
    thread.join(timeout=5)
    assert not thread.is_alive()  # its OpenMP team, if any, went with it


def test_optimize_locals_blocking_wrapper_computes_on_the_callers_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """optimize_local owns its loop: compute runs inline, where the caller loads and measures models."""
    from agents import local

    seen: list[str] = []

    async def fake_async(*args: object, **kwargs: object) -> str:
        name, _, _ = await compute.run(_where)
        seen.append(name)
        return "done"

    monkeypatch.setattr(local, "optimize_local_async", fake_async)
    assert local.optimize_local(None, {}) == "done"
    assert seen == [threading.current_thread().name]
    assert compute.inline.get() is False  # reset after the call
