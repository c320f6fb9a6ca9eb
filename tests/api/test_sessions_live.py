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
    done_at_kill = before["trials_done"]
    server.kill()
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
    # Trials finished before the kill were evaluated once, by the first run; the rest by the second.
    assert all(t["attempt"] == 1 for t in trials[:done_at_kill])
    assert trials[-1]["attempt"] == 2
    events = _stream(server, headers, session_id)
    tool_results = [e["data"]["trial"] for e in events if e["event"] == "tool.result"]
    assert sorted(tool_results) == numbers  # one tool.result per trial, none repeated
    decisions = [e["data"]["trial"] for e in events if e["event"] == "decision"]
    assert sorted(decisions) == numbers
    resumed = [e["data"] for e in events if e["event"] == "status" and e["data"].get("resumed")]
    assert resumed and resumed[0]["attempt"] == 2
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(1, len(ids) + 1))
