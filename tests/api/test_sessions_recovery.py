"""Sessions that must not lose work: artifacts that need another format, save and run failures, chat
and rollback requests across a crash, cancel while queued. Over the HTTP API (in-process ASGI app)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from fastapi import FastAPI

from agents.planners.rules import RulesPlanner
from agents.state import Action
from agents.workspace import Workspace
from state.settings import Settings
from tests.api.llm_mock import LLM_BASE, LLM_SETTINGS, ScriptedLLM, finish, tool
from tests.api.session_helpers import read_events, upload_policy, wait_terminal
from tests.conftest import AuthHeaders, make_settings

QUICK = {"benchmark_iterations": 3, "benchmark_warmup": 1}


@pytest.fixture
def settings(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("DISABLE_AIOHTTP_TRANSPORT", "True")
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # An LLM is configured (mocked by respx where a test plans with it); the other tests plan with the rules.
    return make_settings(
        tmp_path / "data", db_url, max_upload_mb=20, max_concurrent_sessions=1, **LLM_SETTINGS
    )


async def _start(client: httpx.AsyncClient, headers: AuthHeaders, model_id: str, **body: Any) -> str:
    body = {"model_id": model_id, "planner": "rules", **QUICK, **body}
    r = await client.post("/optimize", headers=headers, json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["session_id"])


async def _results(client: httpx.AsyncClient, headers: AuthHeaders, session_id: str) -> dict[str, Any]:
    r = await client.get(f"/sessions/{session_id}/results", headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _download_and_run(
    client: httpx.AsyncClient, headers: AuthHeaders, selected: dict[str, Any], tmp_path: Path
) -> str:
    """Download the selected version, load it with the server's loader and run it: its format."""
    from tools.evaluation import evaluate
    from tools.loading import load_model

    assert selected["model_id"] and selected["download_url"], selected
    meta = (await client.get(f"/models/{selected['model_id']}", headers=headers)).json()
    r = await client.get(selected["download_url"], headers=headers)
    assert r.status_code == 200 and len(r.content) == meta["size_bytes"]
    path = tmp_path / f"downloaded{meta['extension']}"
    path.write_bytes(r.content)
    handle = await asyncio.to_thread(load_model, path)
    ev = await asyncio.to_thread(evaluate, handle, reference=handle)
    assert ev.accuracy_retained == pytest.approx(1.0)
    return str(meta["format"])


@pytest.mark.parametrize(
    ("call", "formats"),
    [
        ({"tool": "quantize", "arguments": {"method": "weight_only_int8"}}, {"pt2"}),
        ({"tool": "quantize", "arguments": {"method": "fp16"}}, {"torchscript"}),
        ({"tool": "quantize", "arguments": {"method": "bf16"}}, {"torchscript"}),
        ({"tool": "quantize", "arguments": {"method": "static_int8"}}, {"onnx", "torchscript"}),
        ({"tool": "prune", "arguments": {"method": "structured", "amount": 0.25}}, {"torchscript"}),
    ],
    ids=["weight_only_int8", "fp16", "bf16", "static_int8", "structured_pruning"],
)
async def test_every_technique_saves_a_version_that_downloads_and_loads(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    tmp_path: Path,
    call: dict[str, Any],
    formats: set[str],
) -> None:
    model_id = await upload_policy(client, admin_headers, tmp_path)
    llm = ScriptedLLM([tool("The step under test.", call["tool"], call["arguments"]), finish()])
    router = respx.mock(assert_all_called=False)
    router.post(f"{LLM_BASE}/chat/completions").mock(side_effect=llm)
    with router:
        session_id = await _start(
            client, admin_headers, model_id, planner="llm", criteria_name="max_compression", max_trials=2
        )
        status = await wait_terminal(client, admin_headers, session_id)
    assert status["status"] == "completed", status
    results = await _results(client, admin_headers, session_id)
    trial = results["trials"][0]
    assert trial["calls"] == [call] and trial["status"] in ("accepted", "rejected"), trial
    assert trial["version_id"] == "v1"
    if results["selected_version"]["version"] != "v1":  # not better than the original: select it anyway
        r = await client.post(
            f"/sessions/{session_id}/rollback", headers=admin_headers, json={"version": "v1"}
        )
        assert r.status_code == 200 and r.json()["applied"] is True, r.text
        results = await _results(client, admin_headers, session_id)
    selected = results["selected_version"]
    assert selected["version"] == "v1" and selected["artifact_format"] in formats
    assert await _download_and_run(client, admin_headers, selected, tmp_path) in formats


async def test_a_candidate_that_cannot_be_saved_is_a_failed_trial(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Workspace, version_id: str, handle: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Workspace, "save", refuse)
    model_id = await upload_policy(client, admin_headers, tmp_path)
    session_id = await _start(client, admin_headers, model_id, max_trials=2)
    status = await wait_terminal(client, admin_headers, session_id)
    assert status["status"] == "completed", status
    results = await _results(client, admin_headers, session_id)
    assert results["trials"] and all(t["status"] == "failed" for t in results["trials"])
    assert "could not be saved" in results["trials"][0]["error"]
    assert "No space left on device" in results["trials"][0]["error"]
    assert results["selected_version"]["version"] == "v0"
    events = await read_events(client, admin_headers, session_id)
    saves = [e["data"] for e in events if e["event"] == "tool.result"]
    assert saves and saves[0]["ok"] is False and saves[0]["stage"] == "save"
    assert "No space left on device" in saves[0]["error"]


async def test_a_failed_session_keeps_its_best_version_downloadable(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A candidate that crashes while measured is only a failed trial (tests/agents/test_local.py); what
    # fails a session is the agent itself crashing: here every planning step after the first (the rules
    # planner is also the fallback, so it crashes twice).
    import agents.planners.rules

    real = agents.planners.rules.decide
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] >= 2:  # trial 1 is planned, applied and measured; planning trial 2 crashes
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(*args, **kwargs)

    monkeypatch.setattr(agents.planners.rules, "decide", flaky)
    model_id = await upload_policy(client, admin_headers, tmp_path)
    session_id = await _start(client, admin_headers, model_id, criteria_name="max_compression", max_trials=4)
    status = await wait_terminal(client, admin_headers, session_id)
    assert status["status"] == "failed" and "illegal memory access" in status["error"], status
    results = await _results(client, admin_headers, session_id)
    assert results["partial"] is True and results["trials"][0]["status"] == "accepted"
    selected = results["selected_version"]
    assert selected["version"] == "v1" and status["result_model_id"] == selected["model_id"]
    # max_compression's first pick runs on ONNX Runtime (a state dict has no format of its own to keep).
    assert await _download_and_run(client, admin_headers, selected, tmp_path) == selected["artifact_format"]


async def test_cancel_while_queued_ends_at_once_without_running(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, tmp_path: Path
) -> None:
    model_id = await upload_policy(client, admin_headers, tmp_path)
    first = await _start(client, admin_headers, model_id, max_trials=1)
    waiting = await _start(client, admin_headers, model_id, max_trials=1)  # one slot: it waits
    r = await client.post(f"/sessions/{waiting}/cancel", headers=admin_headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert (await client.get(f"/sessions/{waiting}/status", headers=admin_headers)).json()["status"] == (
        "cancelled"
    )
    assert (await wait_terminal(client, admin_headers, first))["status"] == "completed"
    await asyncio.sleep(0.5)  # the slot is free: a queued task would start now
    status = await wait_terminal(client, admin_headers, waiting)
    assert status["status"] == "cancelled" and status["started_at"] is None
    events = await read_events(client, admin_headers, waiting)
    assert [e["event"] for e in events] == ["status", "status", "end"]
    assert all(e["data"].get("status") != "running" for e in events)


async def test_a_chat_message_survives_a_crash_during_planning(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = RulesPlanner.next_action
    crashed = asyncio.Event()

    async def crash_once(self: RulesPlanner, view: Any) -> Action:
        if not crashed.is_set():
            crashed.set()
            await asyncio.sleep(3600)  # the process dies here, mid-plan: no checkpoint of this step
        return await real(self, view)

    monkeypatch.setattr(RulesPlanner, "next_action", crash_once)
    model_id = await upload_policy(client, admin_headers, tmp_path)
    session_id = await _start(client, admin_headers, model_id, criteria_name="max_compression", max_trials=4)
    m = await client.post(
        f"/sessions/{session_id}/messages", headers=admin_headers, json={"content": "no pruning"}
    )
    assert m.status_code == 201
    await asyncio.wait_for(crashed.wait(), 60)
    app.state.executor._tasks[session_id].cancel()  # as at shutdown: the row stays `running`
    while app.state.executor.is_running(session_id):
        await asyncio.sleep(0.05)
    assert (await client.get(f"/sessions/{session_id}/status", headers=admin_headers)).json()["status"] == (
        "running"
    )
    convo = (await client.get(f"/sessions/{session_id}/messages", headers=admin_headers)).json()["items"]
    assert convo[0]["consumed"] is False  # taken by a plan that never reached its checkpoint

    app.state.executor.submit(session_id)  # what the next start does
    status = await wait_terminal(client, admin_headers, session_id)
    assert status["status"] == "completed", status
    results = await _results(client, admin_headers, session_id)
    tools = [c["tool"] for t in results["trials"] for c in t["calls"]]
    assert tools and "prune" not in tools, tools
    convo = (await client.get(f"/sessions/{session_id}/messages", headers=admin_headers)).json()["items"]
    assert convo[0]["role"] == "user" and convo[0]["consumed"] is True
    answers = [c for c in convo if c["role"] == "assistant"]
    assert len(answers) == 1 and "No more pruning" in answers[0]["content"]  # answered once, not per run


async def test_a_rollback_that_arrives_after_the_last_plan_applies_at_the_report(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = RulesPlanner.next_action
    session: dict[str, str] = {}
    answers: list[dict[str, Any]] = []

    async def rollback_then_finish(self: RulesPlanner, view: Any) -> Action:
        if not view.trials:
            return await real(self, view)
        # The user asks for a rollback while this (last) planning step runs; the planner finishes.
        r = await client.post(f"/sessions/{session['id']}/rollback", headers=admin_headers)
        answers.append(r.json())
        return Action(kind="finish", reasoning="done")

    monkeypatch.setattr(RulesPlanner, "next_action", rollback_then_finish)
    model_id = await upload_policy(client, admin_headers, tmp_path)
    session["id"] = await _start(client, admin_headers, model_id, max_trials=3)
    status = await wait_terminal(client, admin_headers, session["id"])
    assert status["status"] == "completed", status
    assert answers and answers[0]["applied"] is False and answers[0]["target_version"] == "v0", answers
    results = await _results(client, admin_headers, session["id"])
    assert results["trials"][0]["status"] == "accepted"
    assert results["selected_version"]["version"] == "v0" and status["selected_version"] == "v0"
    assert results["selected_version"]["model_id"] == model_id
    events = await read_events(client, admin_headers, session["id"])
    applied = [e["data"] for e in events if e["event"] == "rollback" and not e["data"].get("pending")]
    applied = [a for a in applied if not a.get("automatic")]
    assert len(applied) == 1 and applied[0]["from_version"] == "v1" and applied[0]["current_version"] == "v0"
