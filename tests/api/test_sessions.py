"""Optimization sessions over the HTTP API with the offline rules planner (no LLM configured)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from state.settings import Settings
from tests.api.session_helpers import read_events, upload_policy, wait_terminal
from tests.conftest import AuthHeaders, MakeUser, make_settings

SPEC_REQUEST = {
    "criteria_name": "balanced_optimization",
    "target_accuracy_threshold": 0.95,
    "max_size_reduction_percent": 50.0,
    "optimization_techniques": ["quantization", "pruning"],
    "benchmark_iterations": 5,
    "benchmark_warmup": 1,
}


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path / "data", db_url, max_upload_mb=20, default_max_trials=6)


async def test_spec_workflow_with_the_rules_planner(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, tmp_path: Path
) -> None:
    model_id = await upload_policy(client, admin_headers, tmp_path)
    r = await client.post("/optimize", headers=admin_headers, json={"model_id": model_id, **SPEC_REQUEST})
    assert r.status_code == 200, r.text
    session_id = r.json()["session_id"]
    assert r.json()["planner"] == "rules"

    # The model cannot be deleted while a session uses it.
    d = await client.delete(f"/models/{model_id}", headers=admin_headers)
    assert d.status_code == 409 and d.json()["error"] == "conflict"

    status = await wait_terminal(client, admin_headers, session_id)
    assert status["status"] == "completed", status
    assert status["progress_percentage"] == 100.0
    assert status["trials_done"] >= 1 and status["finished_at"] is not None

    results = (await client.get(f"/sessions/{session_id}/results", headers=admin_headers)).json()
    summary = results["optimization_summary"]
    assert summary["criteria_met"] is True and summary["goal_reached"] is True
    gains = results["performance_improvements"]
    assert gains["size_reduction_percent"]["value"] > 50.0
    assert (
        gains["size_reduction_percent"]["optimized_bytes"] < gains["size_reduction_percent"]["baseline_bytes"]
    )
    assert gains["accuracy_retained"]["optimized"] >= 0.95
    for key in ("latency_speedup", "memory_reduction_percent"):
        assert set(gains[key]) >= {"value"} and len(gains[key]) >= 3
    first = results["trials"][0]
    assert first["calls"] == [{"tool": "quantize", "arguments": {"method": "dynamic_int8"}}]
    assert first["status"] == "accepted" and first["measurement"]["size_bytes"] > 0 and first["explanation"]
    # The recipe is the selected version's: its last accepted trial's calls end it.
    last = [t for t in results["trials"] if t["status"] == "accepted"][-1]
    assert results["recipe"][-len(last["calls"]) :] == last["calls"]
    assert any(p["version"] == results["selected_version"]["version"] for p in results["pareto_set"])
    assert results["partial"] is False

    # The selected version is a new model derived from the original, downloadable by its owner.
    selected = results["selected_version"]
    new_model = (await client.get(f"/models/{selected['model_id']}", headers=admin_headers)).json()
    assert new_model["parent_model_id"] == model_id
    # static int8 versions run in ONNX Runtime and are saved as ONNX; torch ones as TorchScript.
    quant = [c for c in results["recipe"] if c["tool"] == "quantize"][-1]["arguments"]["method"]
    assert new_model["format"] == ("onnx" if quant == "static_int8" else "torchscript")
    download = await client.get(selected["download_url"], headers=admin_headers)
    assert download.status_code == 200 and len(download.content) == new_model["size_bytes"]

    events = await read_events(client, admin_headers, session_id)
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(1, len(ids) + 1))
    kinds = [e["event"] for e in events]
    for kind in (
        "status",
        "analysis",
        "agent.thought",
        "agent.action",
        "tool.result",
        "evaluation",
        "decision",
        "progress",
        "result",
        "end",
    ):
        assert kind in kinds, kind
    assert kinds[-1] == "end" and events[-1]["data"]["status"] == "completed"
    # Last-Event-ID replays only what came after it.
    tail = await read_events(client, admin_headers, session_id, last_id=ids[-3])
    assert [int(e["id"]) for e in tail] == ids[-2:]

    listed = (await client.get("/sessions?status=completed", headers=admin_headers)).json()
    assert session_id in [s["session_id"] for s in listed["items"]] and listed["total"] >= 1
    assert (await client.get("/sessions?status=running", headers=admin_headers)).json()["total"] == 0

    # Finished: chat and cancel are refused, deleting the original is allowed again.
    m = await client.post(f"/sessions/{session_id}/messages", headers=admin_headers, json={"content": "hi"})
    assert m.status_code == 409
    assert (await client.post(f"/sessions/{session_id}/cancel", headers=admin_headers)).status_code == 409


async def test_sessions_are_owner_scoped(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, make_user: MakeUser, tmp_path: Path
) -> None:
    alice = await make_user("user")
    bob = await make_user("user")
    model_id = await upload_policy(client, alice, tmp_path)
    # Bob cannot optimize Alice's model: it does not exist for him.
    r = await client.post("/optimize", headers=bob, json={"model_id": model_id, **SPEC_REQUEST})
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = await client.post(
        "/optimize", headers=alice, json={"model_id": model_id, **SPEC_REQUEST, "max_trials": 1}
    )
    session_id = r.json()["session_id"]
    for method, path in [
        ("GET", f"/sessions/{session_id}/status"),
        ("GET", f"/sessions/{session_id}/results"),
        ("GET", f"/sessions/{session_id}/events"),
        ("GET", f"/sessions/{session_id}/messages"),
        ("POST", f"/sessions/{session_id}/cancel"),
        ("POST", f"/sessions/{session_id}/rollback"),
    ]:
        resp = await client.request(method, path, headers=bob)
        assert resp.status_code == 404, (path, resp.text)
        assert resp.json() == {"error": "not_found", "message": "Session not found", "details": None}
    assert (await client.get("/sessions", headers=bob)).json()["total"] == 0
    assert (await client.get("/sessions", headers=alice)).json()["total"] == 1
    assert (await client.get(f"/sessions/{session_id}/status", headers=admin_headers)).status_code == 200
    await wait_terminal(client, alice, session_id)
    assert (await client.get("/sessions/0123/status", headers=alice)).status_code == 404
    assert (await client.get("/sessions")).status_code == 401


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"target_accuracy_threshold": 1.5}, "target_accuracy_threshold"),
        ({"max_size_reduction_percent": 120}, "max_size_reduction_percent"),
        ({"optimization_techniques": ["distillation"]}, "optimization_techniques"),
        ({"optimization_techniques": []}, "optimization_techniques"),
        ({"criteria_name": "fastest_please"}, "criteria_name"),
        ({"criteria_name": "accuracy_first", "target_accuracy_threshold": 0.5}, "accuracy_first"),
        ({"optimization_techniques": ["half_precision"], "max_size_reduction_percent": 80}, "half_precision"),
        ({"device": "cuda"}, "cuda"),
        ({"planner": "llm"}, "LLM_MODEL"),
        ({"max_trials": 0}, "max_trials"),
    ],
)
async def test_invalid_requests_answer_422_in_the_spec_format(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, tmp_path: Path, body: dict, fragment: str
) -> None:
    model_id = await upload_policy(client, admin_headers, tmp_path)
    r = await client.post("/optimize", headers=admin_headers, json={"model_id": model_id, **body})
    assert r.status_code == 422, r.text
    err = r.json()
    assert set(err) == {"error", "message", "details"}
    assert fragment in f"{err['message']} {err['details']}"


async def test_missing_model_id_and_unknown_model(
    client: httpx.AsyncClient, admin_headers: AuthHeaders
) -> None:
    r = await client.post("/optimize", headers=admin_headers, json={"criteria_name": "max_speed"})
    assert r.status_code == 422 and "model_id" in r.json()["details"]
    r = await client.post("/optimize", headers=admin_headers, json={"model_id": "nope"})
    assert r.status_code == 404


async def test_chat_message_reaches_the_planner_and_is_answered(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, tmp_path: Path
) -> None:
    model_id = await upload_policy(client, admin_headers, tmp_path)
    body = {
        "model_id": model_id,
        "criteria_name": "max_compression",
        "max_trials": 4,
        "benchmark_iterations": 3,
    }
    session_id = (await client.post("/optimize", headers=admin_headers, json=body)).json()["session_id"]
    m = await client.post(
        f"/sessions/{session_id}/messages",
        headers=admin_headers,
        json={"content": "no pruning, only quantization"},
    )
    assert m.status_code == 201 and m.json()["role"] == "user"
    await wait_terminal(client, admin_headers, session_id)
    convo = (await client.get(f"/sessions/{session_id}/messages", headers=admin_headers)).json()["items"]
    assert [c["role"] for c in convo] == ["user", "assistant"]
    assert convo[0]["consumed"] is True and "No more pruning" in convo[1]["content"]
    events = await read_events(client, admin_headers, session_id)
    answer = next(
        i for i, e in enumerate(events) if e["event"] == "message" and e["data"]["role"] == "assistant"
    )
    later_tools = [
        e["data"]["tool"] for e in events[answer:] if e["event"] == "agent.action" and "tool" in e["data"]
    ]
    assert "prune" not in later_tools
