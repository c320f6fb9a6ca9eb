"""Secrets never leave the server: the JWT secret, LLM_API_KEY and passwords do not appear in its logs,
in any response body (errors included), in session events, or in the OpenAPI schema."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import jwt

from tests.api.model_files import onnx_model
from tests.api.session_helpers import TERMINAL, parse_sse
from tests.conftest import ADMIN_PASSWORD, LiveServerFactory
from tests.hardening.conftest import create_user, login, upload


def test_secrets_stay_out_of_logs_bodies_events_and_schema(
    live_server_factory: LiveServerFactory, tmp_path: Path
) -> None:
    jwt_secret = f"jwt-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    llm_key = f"sk-llm-{uuid.uuid4().hex}"
    user_password = f"pw-{uuid.uuid4().hex}"
    wrong_password = f"wrong-{uuid.uuid4().hex}"
    server = live_server_factory(
        env={
            "JWT_SECRET_KEY": jwt_secret,
            "LLM_API_KEY": llm_key,
            "LLM_MODEL": "openai/gpt-test",
            "LLM_API_BASE": "http://127.0.0.1:9",  # never reached: the sessions here use the rules planner
            "DEFAULT_MAX_TRIALS": "1",
        }
    )
    base = server.base_url
    bodies: list[str] = []

    def keep(r: httpx.Response) -> httpx.Response:
        bodies.append(r.text)
        return r

    admin = login(base)
    create_user(base, admin, "alice", user_password)
    keep(httpx.post(f"{base}/auth/login", json={"username": "alice", "password": wrong_password}, timeout=30))
    keep(httpx.post(f"{base}/auth/login", data={"username": "alice", "password": wrong_password}, timeout=30))
    alice = login(base, "alice", user_password)
    # Errors that could echo what was sent: a short password, a malformed body, a forged token.
    keep(
        httpx.post(
            f"{base}/users", json={"username": "bob", "password": llm_key[:3]}, headers=admin, timeout=30
        )
    )
    keep(httpx.patch(f"{base}/users/nobody", json={"password": wrong_password}, headers=admin, timeout=30))
    keep(httpx.post(f"{base}/auth/login", content=b'{"password": "' + wrong_password.encode(), timeout=30))
    forged = jwt.encode(
        {"sub": "x", "role": "admin", "exp": time.time() + 60}, "not-the-secret", algorithm="HS256"
    )
    keep(httpx.get(f"{base}/auth/me", headers={"Authorization": f"Bearer {forged}"}, timeout=30))
    for path in (
        "/monitoring/system",
        "/monitoring/health/detailed",
        "/monitoring/sessions/metrics",
        "/metrics",
    ):
        keep(httpx.get(f"{base}{path}", headers=admin, timeout=30))
    keep(httpx.get(f"{base}/health", timeout=30))
    schema = keep(httpx.get(f"{base}/openapi.json", timeout=30)).text

    # A session (rules planner): its status, results and every event.
    model_id = keep(upload(base, alice, onnx_model(tmp_path / "m.onnx"))).json()["model_id"]
    r = keep(
        httpx.post(
            f"{base}/optimize", json={"model_id": model_id, "planner": "rules"}, headers=alice, timeout=30
        )
    )
    session_id = r.json()["session_id"]
    deadline = time.monotonic() + 120
    while (status := httpx.get(f"{base}/sessions/{session_id}/status", headers=alice, timeout=30).json())[
        "status"
    ] not in TERMINAL:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    bodies.append(str(status))
    keep(httpx.get(f"{base}/sessions/{session_id}/results", headers=alice, timeout=30))
    with httpx.stream("GET", f"{base}/sessions/{session_id}/events", headers=alice, timeout=60) as stream:
        events = parse_sse(list(stream.iter_lines()))
    assert events and events[-1]["event"] == "end"

    server.stop()
    log = server.log_path.read_text(errors="replace")
    assert "login_failed" in log and "/auth/me 401" in log  # the log did see these requests
    places = {
        "log": log,
        "schema": schema,
        "events": repr(events),
        **{f"body {i}": b for i, b in enumerate(bodies)},
    }
    secrets = {
        "JWT secret": jwt_secret,
        "LLM_API_KEY": llm_key,
        "admin password": ADMIN_PASSWORD,
        "user password": user_password,
        "wrong password": wrong_password,
    }
    leaks = [
        f"{what} in {where}" for what, s in secrets.items() for where, text in places.items() if s in text
    ]
    assert not leaks, leaks
    print(
        f"\nsecrets: {len(secrets)} secrets checked in {len(places)} places (log, schema, events, "
        f"{len(bodies)} response bodies): 0 leaks"
    )
