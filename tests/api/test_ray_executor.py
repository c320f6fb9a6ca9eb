"""Sessions on a local Ray cluster (EXECUTOR=ray): one completes; one whose Ray worker is killed with
SIGKILL mid-session completes on another worker without repeating a finished trial.

One cluster for the module (`ray start --head` in its own process group, stopped by that group's id);
the app under test connects to it as the API does (RAY_ADDRESS). Skipped only when Ray cannot start here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from state import runs
from state.settings import Settings
from tests.api.session_helpers import read_events, upload_policy, wait_terminal
from tests.conftest import ADMIN_PASSWORD, free_port, login, make_settings

pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[dev]')")

pytestmark = [pytest.mark.slow, pytest.mark.ray]

QUICK = {"planner": "rules", "max_trials": 2, "benchmark_iterations": 50, "benchmark_warmup": 2}
SLOW = {
    "planner": "rules",
    "criteria_name": "max_compression",
    "max_trials": 4,
    "benchmark_iterations": 200,
    "benchmark_warmup": 2,
}


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    ray_cli = Path(sys.executable).with_name("ray")
    port = free_port()
    # Short: Ray's unix sockets live under it (108 bytes at most).
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    command = [
        str(ray_cli),
        "start",
        "--head",
        f"--port={port}",
        f"--temp-dir={temp_dir}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    starter = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    group = starter.pid  # the head's processes stay in this process group after `ray start` returns
    try:
        output, _ = starter.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        output = "timed out"
    if starter.returncode != 0:
        _stop_group(group)
        shutil.rmtree(temp_dir, ignore_errors=True)
        pytest.skip(f"a local Ray cluster could not start here: {output[-1500:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop_group(group)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_group(group: int) -> None:
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@pytest.fixture
def settings(tmp_path: Path, db_url: str, ray_address: str) -> Settings:
    return make_settings(
        tmp_path / "data",
        db_url,
        executor="ray",
        ray_address=ray_address,
        ray_num_cpus=1,
        run_lease_s=4.0,
        run_heartbeat_s=1.0,
        max_upload_mb=20,
    )


async def _start(client: httpx.AsyncClient, tmp_path: Path, criteria: dict[str, Any]) -> tuple[Any, str]:
    headers = await login(client, "admin", ADMIN_PASSWORD)
    model_id = await upload_policy(client, headers, tmp_path)
    r = await client.post("/optimize", headers=headers, json={"model_id": model_id, **criteria})
    assert r.status_code == 200, r.text
    return headers, r.json()["session_id"]


def _tool_runs(events: list[dict[str, Any]]) -> dict[int, list[int]]:
    executions: dict[int, list[int]] = {}
    for e in events:
        if e["event"] == "tool.result":
            executions.setdefault(e["data"]["trial"], []).append(e["data"]["attempt"])
    return executions


async def _settled_attempts(app: FastAPI, sid: str) -> list[Any]:
    """The session's attempts once the last is closed: the worker closes its attempt right after it
    writes the session's end (and publishes its artifacts), so that write follows the status by a moment."""
    finish_by = time.monotonic() + 15
    while True:
        attempts = await runs.attempts(app.state.sessionmaker, sid)
        if attempts[-1].status != "active" or time.monotonic() > finish_by:
            return attempts
        await asyncio.sleep(0.2)


async def test_a_session_completes_on_a_ray_cluster(
    app: FastAPI, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    headers, sid = await _start(client, tmp_path, QUICK)
    final = await wait_terminal(client, headers, sid, timeout_s=180)
    assert final["status"] == "completed", final
    attempts = await _settled_attempts(app, sid)
    assert [(a.attempt, a.status) for a in attempts] == [(1, "finished")]
    assert attempts[0].worker_id.startswith("ray:")
    assert int(attempts[0].worker_id.split(":")[3]) != os.getpid()  # a Ray worker process ran it
    events = await read_events(client, headers, sid)
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["event"] == "end" and events[-1]["data"]["status"] == "completed"
    results = (await client.get(f"/sessions/{sid}/results", headers=headers)).json()
    assert results["trials"] and results["selected_version"]["version"]


async def test_a_ray_worker_killed_mid_session_completes_on_another_without_repeating_trials(
    app: FastAPI, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    headers, sid = await _start(client, tmp_path, SLOW)
    deadline = time.monotonic() + 180
    while True:
        status = (await client.get(f"/sessions/{sid}/status", headers=headers)).json()
        if status["trials_done"] >= 1:
            break
        assert status["status"] not in ("completed", "failed", "cancelled"), status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)
    recorded = (await client.get(f"/sessions/{sid}/results", headers=headers)).json()["trials"]
    holder = await runs.active_attempt(app.state.sessionmaker, sid)
    assert holder is not None and holder.worker_id.startswith("ray:")
    pid = int(holder.worker_id.split(":")[3])
    os.kill(pid, signal.SIGKILL)

    final = await wait_terminal(client, headers, sid, timeout_s=240)
    assert final["status"] == "completed", final
    attempts = await _settled_attempts(app, sid)
    assert [(a.attempt, a.status) for a in attempts] == [(1, "expired"), (2, "finished")]
    assert attempts[1].worker_id.split(":")[3] != str(pid)  # Ray ran the retry on another worker
    trials = (await client.get(f"/sessions/{sid}/results", headers=headers)).json()["trials"]
    assert [t["number"] for t in trials] == list(range(1, len(trials) + 1))
    assert trials[: len(recorded)] == recorded
    executions = _tool_runs(await read_events(client, headers, sid))
    for t in recorded:
        assert executions[t["number"]] == [1], executions
