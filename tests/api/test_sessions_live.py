"""Sessions on a real uvicorn server: live SSE with Last-Event-ID, cancel, rollback, SIGKILL and resume."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.api.session_helpers import TERMINAL, parse_sse, write_policy
from tests.conftest import ADMIN_PASSWORD, LiveServer, LiveServerFactory

# Long enough to act on mid-run: max_compression on a random-init MLP quantizes, then searches pruning
# amounts that all break the floor (8 trials if the budget allowed them).
SLOW = {
    "criteria_name": "max_compression",
    "max_trials": 8,
    "benchmark_iterations": 1000,
    "benchmark_warmup": 5,
}
WIDE = {"obs_dim": 32, "act_dim": 8, "hidden": [1024, 1024]}


def _login(base: str) -> dict[str, str]:
    r = httpx.post(f"{base}/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}, timeout=30)
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _start(server: LiveServer, tmp_path: Path, **criteria: Any) -> tuple[dict[str, str], str, str]:
    headers = _login(server.base_url)
    path, arch = write_policy(tmp_path, WIDE)
    with open(path, "rb") as f:
        r = httpx.post(
            f"{server.base_url}/models/upload",
            headers=headers,
            files={"file": ("policy.pt", f, "application/octet-stream")},
            data={"name": "policy", "architecture": arch},
            timeout=60,
        )
    assert r.status_code == 200, r.text
    model_id = r.json()["model_id"]
    r = httpx.post(
        f"{server.base_url}/optimize", headers=headers, json={"model_id": model_id, **criteria}, timeout=30
    )
    assert r.status_code == 200, r.text
    return headers, model_id, r.json()["session_id"]


def _status(server: LiveServer, headers: dict[str, str], session_id: str) -> dict[str, Any]:
    r = httpx.get(f"{server.base_url}/sessions/{session_id}/status", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _wait(
    server: LiveServer, headers: dict[str, str], session_id: str, until: Any, timeout_s: float = 120
) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = _status(server, headers, session_id)
        if until(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"timed out; last status {body}\n{server.log_tail()}")


def _stream(
    server: LiveServer,
    headers: dict[str, str],
    session_id: str,
    last_id: int | None = None,
    stop_at: str = "end",
    raw: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Read the stream live until an event of type `stop_at`, then disconnect."""
    h = dict(headers)
    if last_id is not None:
        h["Last-Event-ID"] = str(last_id)
    events: list[dict[str, Any]] = []
    lines: list[str] = []
    with httpx.stream("GET", f"{server.base_url}/sessions/{session_id}/events", headers=h, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            lines.append(line)
            if line == "":
                events = parse_sse(lines)
                if events and events[-1]["event"] == stop_at:
                    break
    if raw is not None:
        raw.extend(lines)
    return parse_sse(lines)


def test_live_stream_resume_with_last_event_id_and_rollback(
    live_server_factory: LiveServerFactory, tmp_path: Path
) -> None:
    server = live_server_factory(env={"SSE_PING_S": "0.5"})
    headers, model_id, session_id = _start(server, tmp_path, **SLOW)

    # Live: the first decision arrives while the session is still running; then the client goes away.
    raw: list[str] = []
    first = _stream(server, headers, session_id, stop_at="decision", raw=raw)
    assert _status(server, headers, session_id)["status"] == "running"
    assert any(line.startswith(":") for line in raw)  # keep-alive pings while the model is profiled
    assert first[0]["event"] == "status" and first[-1]["event"] == "decision"
    last = int(first[-1]["id"])

    # Reconnect with Last-Event-ID: exactly the events after it, up to the end.
    rest = _stream(server, headers, session_id, last_id=last)
    ids = [int(e["id"]) for e in first + rest]
    assert ids == list(range(1, len(ids) + 1)), ids
    assert rest[-1]["event"] == "end" and rest[-1]["data"]["status"] == "completed"

    results = httpx.get(
        f"{server.base_url}/sessions/{session_id}/results", headers=headers, timeout=30
    ).json()
    selected = results["selected_version"]
    assert selected["version"] != "v0" and results["accepted_chain"][-1] == selected["version"]

    # Rollback: back to the previous accepted version (the original here), recorded as an event.
    r = httpx.post(f"{server.base_url}/sessions/{session_id}/rollback", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["applied"] is True and r.json()["target_version"] == "v0"
    after = httpx.get(f"{server.base_url}/sessions/{session_id}/results", headers=headers, timeout=30).json()
    assert after["selected_version"]["version"] == "v0" and after["selected_version"]["model_id"] == model_id
    assert after["performance_improvements"]["size_reduction_percent"]["value"] == 0.0
    tail = _stream(server, headers, session_id, last_id=ids[-1])
    assert [e["event"] for e in tail] == ["rollback", "result", "end"]
    assert (
        tail[0]["data"]["from_version"] == selected["version"] and tail[0]["data"]["current_version"] == "v0"
    )

    # ...and forward again to the trial that produced the first selection: the same registered model.
    r = httpx.post(
        f"{server.base_url}/sessions/{session_id}/rollback",
        headers=headers,
        json={"trial": selected["trial"]},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["target_version"] == selected["version"]
    again = httpx.get(f"{server.base_url}/sessions/{session_id}/results", headers=headers, timeout=30).json()
    assert again["selected_version"]["model_id"] == selected["model_id"]
    bad = httpx.post(
        f"{server.base_url}/sessions/{session_id}/rollback", headers=headers, json={"trial": 99}, timeout=30
    )
    assert bad.status_code == 422 and bad.json()["error"] == "rollback_impossible"


def test_cancel_mid_run_keeps_partial_results(live_server_factory: LiveServerFactory, tmp_path: Path) -> None:
    server = live_server_factory()
    headers, _model_id, session_id = _start(server, tmp_path, **SLOW)
    _wait(server, headers, session_id, lambda s: s["trials_done"] >= 1)
    r = httpx.post(f"{server.base_url}/sessions/{session_id}/cancel", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    final = _wait(server, headers, session_id, lambda s: s["status"] in TERMINAL)
    assert final["status"] == "cancelled" and final["cancel_requested"] is True
    assert final["trials_done"] < SLOW["max_trials"]
    results = httpx.get(
        f"{server.base_url}/sessions/{session_id}/results", headers=headers, timeout=30
    ).json()
    assert results["partial"] is True and results["status"] == "cancelled"
    assert len(results["trials"]) == final["trials_done"] >= 1
    assert results["optimization_summary"]["finish_reason"] == "cancelled"
    events = _stream(server, headers, session_id)
    assert events[-1]["event"] == "end" and events[-1]["data"]["status"] == "cancelled"


def test_sigkill_mid_session_resumes_without_repeating_finished_trials(
    live_server_factory: LiveServerFactory, tmp_path: Path
) -> None:
    server = live_server_factory()
    headers, _model_id, session_id = _start(server, tmp_path, **SLOW)
    before = _wait(server, headers, session_id, lambda s: s["trials_done"] >= 2)
    # The row never runs ahead of the checkpoint: the trials it reports are the checkpointed ones.
    partial = httpx.get(f"{server.base_url}/sessions/{session_id}/results", headers=headers, timeout=30)
    assert partial.status_code == 200, partial.text
    server.kill()
    done_at_kill = before["trials_done"]
    recorded = partial.json()["trials"]
    assert len(recorded) >= done_at_kill
    server.start()
    headers = _login(server.base_url)
    final = _wait(server, headers, session_id, lambda s: s["status"] in TERMINAL)
    assert final["status"] == "completed", server.log_tail()
    assert "resuming session" in server.log_tail(200000)

    results = httpx.get(
        f"{server.base_url}/sessions/{session_id}/results", headers=headers, timeout=30
    ).json()
    trials = results["trials"]
    numbers = [t["number"] for t in trials]
    assert numbers == list(range(1, len(trials) + 1))
    assert len(trials) > done_at_kill and trials[-1]["attempt"] == 2
    # The trials recorded before the kill are the very same records after it: not applied, measured
    # or decided again (a re-run has a new attempt number and new timings).
    assert trials[: len(recorded)] == recorded
    assert all(t["attempt"] == 1 for t in recorded)
    events = _stream(server, headers, session_id)
    # Every tool execution writes one tool.result keyed by (trial, attempt): the finished trials ran
    # their tools once, in the first run.
    executions: dict[int, list[int]] = {}
    for e in events:
        if e["event"] == "tool.result":
            executions.setdefault(e["data"]["trial"], []).append(e["data"]["attempt"])
    for t in recorded:
        assert executions[t["number"]] == [1], (t["number"], executions)
    measured: dict[int, list[int]] = {}
    for e in events:
        if e["event"] == "evaluation":
            measured.setdefault(e["data"]["trial"], []).append(e["data"]["attempt"])
    for t in recorded:
        if t["status"] != "failed":
            assert measured[t["number"]] == [1], (t["number"], measured)
    resumed = [e["data"] for e in events if e["event"] == "status" and e["data"].get("resumed")]
    assert resumed and resumed[0]["attempt"] == 2
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(1, len(ids) + 1))


def test_rollback_while_running_survives_a_kill_and_applies_once(
    live_server_factory: LiveServerFactory, tmp_path: Path
) -> None:
    server = live_server_factory()
    headers, _model_id, session_id = _start(server, tmp_path, **SLOW)
    body = _wait(server, headers, session_id, lambda s: s["selected_version"] not in (None, "v0"))
    accepted = body["selected_version"]
    r = httpx.post(f"{server.base_url}/sessions/{session_id}/rollback", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["applied"] is False and r.json()["status"] == "running"
    # The server dies before the agent's next step: the request is in the database, not only in memory.
    server.kill()
    server.start()
    headers = _login(server.base_url)
    final = _wait(server, headers, session_id, lambda s: s["status"] in TERMINAL)
    assert final["status"] == "completed", server.log_tail()
    events = _stream(server, headers, session_id)
    manual = [
        e["data"]
        for e in events
        if e["event"] == "rollback" and not e["data"].get("automatic") and not e["data"].get("pending")
    ]
    assert len(manual) == 1, manual
    assert (
        manual[0]["from_version"] == accepted and manual[0]["current_version"] == r.json()["target_version"]
    )
    results = httpx.get(
        f"{server.base_url}/sessions/{session_id}/results", headers=headers, timeout=30
    ).json()
    # The graph moved back too: the trials planned after the rollback start from its target.
    at = next(i for i, e in enumerate(events) if e["event"] == "rollback" and e["data"] is manual[0])
    later = {e["data"]["trial"] for e in events[at:] if e["event"] == "agent.action" and "tool" in e["data"]}
    first_after = [t for t in results["trials"] if t["number"] in later]
    if first_after:
        assert first_after[0]["base_version"] == r.json()["target_version"]


def test_cancel_before_the_session_starts(live_server_factory: LiveServerFactory, tmp_path: Path) -> None:
    server = live_server_factory()
    headers, model_id, running = _start(server, tmp_path, **SLOW)
    r = httpx.post(
        f"{server.base_url}/optimize", headers=headers, json={"model_id": model_id, **SLOW}, timeout=30
    )
    waiting = r.json()["session_id"]  # MAX_CONCURRENT_SESSIONS=1: it waits for the slot
    r = httpx.post(f"{server.base_url}/sessions/{waiting}/cancel", headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    httpx.post(f"{server.base_url}/sessions/{running}/cancel", headers=headers, timeout=30)
    _wait(server, headers, running, lambda s: s["status"] in TERMINAL)
    time.sleep(1.0)
    status = _status(server, headers, waiting)
    assert status["status"] == "cancelled" and status["started_at"] is None
    events = _stream(server, headers, waiting)
    assert [e["event"] for e in events] == ["status", "status", "end"]
