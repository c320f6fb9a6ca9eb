"""Health, monitoring and metrics endpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import AuthHeaders, MakeUser, UploadModel


async def test_health_needs_no_auth_and_reports_database(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["version"]
    assert r.headers["x-request-id"]


async def test_health_answers_503_when_database_is_unreachable(client: httpx.AsyncClient, app) -> None:  # type: ignore[no-untyped-def]
    await app.state.engine.dispose()
    from state.db import create_engine_for

    real = app.state.engine
    app.state.engine = create_engine_for("postgresql+psycopg://nobody@127.0.0.1:1/none")
    try:
        r = await client.get("/health")
    finally:
        await app.state.engine.dispose()
        app.state.engine = real
    assert r.status_code == 503
    assert r.json()["error"] == "service_unavailable"


async def test_monitoring_endpoints_need_auth(client: httpx.AsyncClient) -> None:
    for path in (
        "/monitoring/system",
        "/monitoring/sessions/metrics",
        "/monitoring/health/detailed",
        "/metrics",
    ):
        r = await client.get(path)
        assert r.status_code == 401, path
        assert r.json()["error"] == "unauthorized"


async def test_system_status(client: httpx.AsyncClient, admin_headers: AuthHeaders) -> None:
    r = await client.get("/monitoring/system", headers=admin_headers)
    assert r.status_code == 200
    body = r.json()
    assert body["cpu_count"] >= 1
    assert 0 <= body["memory_percent"] <= 100
    assert body["disk_total_bytes"] > 0
    assert body["model_count"] == 0 and body["model_storage_bytes"] == 0
    assert isinstance(body["gpus"], list)
    assert body["active_sessions"] >= 0


async def test_session_metrics_shape(client: httpx.AsyncClient, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("user")
    r = await client.get("/monitoring/sessions/metrics", headers=user)
    assert r.status_code == 200
    body = r.json()
    assert body["max_concurrent_sessions"] >= 1
    assert body["active"] <= body["total"]
    assert sum(body["by_status"].values()) == body["total"]


async def test_detailed_health(client: httpx.AsyncClient, admin_headers: AuthHeaders) -> None:
    r = await client.get("/monitoring/health/detailed", headers=admin_headers)
    assert r.status_code == 200
    body = r.json()
    assert set(body["components"]) == {"database", "disk", "checkpoint_store", "gpu", "llm"}
    assert body["components"]["database"]["ok"] is True
    llm = body["components"]["llm"]["detail"]
    assert llm["configured"] is False and llm["api_key_set"] is False
    assert "rules" in llm["planner"]


async def test_prometheus_metrics_count_requests_and_logins(
    client: httpx.AsyncClient, admin_headers: AuthHeaders
) -> None:
    await client.get("/health")
    await client.post("/auth/login", json={"username": "admin", "password": "wrong"})
    r = await client.get("/metrics", headers=admin_headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'robopt_http_requests_total{method="GET",route="/health",status="200"}' in text
    assert 'robopt_logins_total{result="success"}' in text
    assert 'robopt_logins_total{result="failed"} 1.0' in text
    assert "robopt_http_request_duration_seconds_bucket" in text


@pytest.mark.skipif(importlib.util.find_spec("state.sessions") is None, reason="sessions table not present")
async def test_session_metrics_count_by_status_and_owner(
    client: httpx.AsyncClient, app: FastAPI, admin_headers: AuthHeaders, make_user: MakeUser
) -> None:
    from state.sessions import OptimizationSession

    alice, bob = await make_user("user"), await make_user("user")
    async with app.state.sessionmaker() as db:
        for owner, status in ((alice, "running"), (alice, "completed"), (alice, "queued"), (bob, "failed")):
            db.add(OptimizationSession(owner_id=owner.user_id, model_id="m" * 32, status=status, criteria={}))
        await db.commit()
    mine = (await client.get("/monitoring/sessions/metrics", headers=alice)).json()
    assert mine["available"] is True
    assert mine["by_status"] == {"running": 1, "completed": 1, "queued": 1}
    assert mine["total"] == 3 and mine["active"] == 2
    assert (await client.get("/monitoring/sessions/metrics", headers=bob)).json()["by_status"] == {
        "failed": 1
    }
    everything = (await client.get("/monitoring/sessions/metrics", headers=admin_headers)).json()
    assert everything["total"] == 4 and everything["active"] == 2
    # /monitoring/system counts only the caller's sessions (all for admins).
    assert (await client.get("/monitoring/system", headers=bob)).json()["active_sessions"] == 0
    assert (await client.get("/monitoring/system", headers=alice)).json()["active_sessions"] == 2
    system = (await client.get("/monitoring/system", headers=admin_headers)).json()
    assert system["active_sessions"] == 2 and system["scope"] == "all"


async def test_upload_metrics_and_model_storage(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, upload_model: UploadModel, tmp_path: Path
) -> None:
    from tests.api import model_files as mf

    good = mf.onnx_model(tmp_path / "m.onnx")
    assert (await upload_model(admin_headers, good)).status_code == 200
    assert (await upload_model(admin_headers, good, filename="m.exe")).status_code == 400
    system = (await client.get("/monitoring/system", headers=admin_headers)).json()
    assert system["model_count"] == 1 and system["model_storage_bytes"] == good.stat().st_size
    text = (await client.get("/metrics", headers=admin_headers)).text
    assert 'robopt_uploads_total{kind="model",result="accepted"} 1.0' in text
    assert 'robopt_uploads_total{kind="model",result="refused"} 1.0' in text
    assert f"robopt_upload_bytes_total {float(good.stat().st_size)}" in text


async def test_system_status_scopes_models_to_the_caller(
    client: httpx.AsyncClient,
    admin_headers: AuthHeaders,
    make_user: MakeUser,
    upload_model: UploadModel,
    tmp_path: Path,
) -> None:
    from tests.api import model_files as mf

    alice, bob = await make_user("user"), await make_user("user")
    model = mf.onnx_model(tmp_path / "m.onnx")
    size = model.stat().st_size
    for _ in range(2):
        assert (await upload_model(alice, model)).status_code == 200
    mine = (await client.get("/monitoring/system", headers=alice)).json()
    assert mine["scope"] == "own"
    assert mine["model_count"] == 2 and mine["model_storage_bytes"] == 2 * size
    # Bob sees none of Alice's models, but the same machine-wide figures.
    theirs = (await client.get("/monitoring/system", headers=bob)).json()
    assert theirs["scope"] == "own"
    assert (
        theirs["model_count"] == 0 and theirs["model_storage_bytes"] == 0 and theirs["active_sessions"] == 0
    )
    assert theirs["cpu_count"] == mine["cpu_count"] and theirs["disk_total_bytes"] == mine["disk_total_bytes"]
    everything = (await client.get("/monitoring/system", headers=admin_headers)).json()
    assert everything["scope"] == "all"
    assert everything["model_count"] == 2 and everything["model_storage_bytes"] == 2 * size
