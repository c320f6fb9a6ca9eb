"""The error body everywhere, request ids, CORS, and the OpenAPI document."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from api.errors import ApiError
from api.main import create_app
from tests.conftest import make_settings


async def test_unknown_route_and_method_use_the_error_body(client: httpx.AsyncClient) -> None:
    r = await client.get("/no/such/route")
    assert r.status_code == 404
    assert r.json()["error"] == "not_found" and set(r.json()) == {"error", "message", "details"}
    r = await client.put("/health")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


async def test_validation_errors_name_the_field(client: httpx.AsyncClient, admin_headers) -> None:  # type: ignore[no-untyped-def]
    r = await client.get("/models", params={"limit": "many"}, headers=admin_headers)
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "validation_error" and body["message"] == "Invalid request parameters"
    assert body["details"].startswith("limit:")


async def test_unhandled_exception_is_a_500_with_the_error_body(tmp_path, db_url) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_settings(tmp_path / "data", db_url))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    @app.get("/teapot")
    async def teapot() -> None:
        raise ApiError(418, "teapot", "I am a teapot", {"spout": 1})

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.get("/boom", headers={"X-Request-ID": "abc-123"})
            assert r.status_code == 500
            assert r.json()["error"] == "internal_error"
            assert "secret internals" not in r.text
            assert r.headers["x-request-id"] == "abc-123"
            assert r.json()["details"] == {"request_id": "abc-123"}
            r = await c.get("/teapot")
            assert r.status_code == 418 and r.json() == {
                "error": "teapot",
                "message": "I am a teapot",
                "details": {"spout": 1},
            }


async def test_request_ids(client: httpx.AsyncClient) -> None:
    r1, r2 = await client.get("/health"), await client.get("/health")
    assert r1.headers["x-request-id"] != r2.headers["x-request-id"]
    assert (await client.get("/health", headers={"X-Request-ID": "mine-1"})).headers[
        "x-request-id"
    ] == "mine-1"
    # An id that could forge log lines is replaced.
    r = await client.get("/health", headers={"X-Request-ID": "x\ny INFO fake"})
    assert r.headers["x-request-id"] != "x\ny INFO fake" and len(r.headers["x-request-id"]) == 32


@pytest.fixture
def cors_app(tmp_path, db_url) -> FastAPI:  # type: ignore[no-untyped-def]
    return create_app(make_settings(tmp_path / "data", db_url, cors_origins=["https://robot.example"]))


async def test_cors_allows_only_configured_origins(cors_app: FastAPI) -> None:
    async with cors_app.router.lifespan_context(cors_app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=cors_app), base_url="http://t") as c:
            ok = await c.get("/health", headers={"Origin": "https://robot.example"})
            assert ok.headers["access-control-allow-origin"] == "https://robot.example"
            bad = await c.get("/health", headers={"Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in bad.headers
            pre = await c.options(
                "/models",
                headers={
                    "Origin": "https://robot.example",
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "authorization",
                },
            )
            assert pre.status_code == 200
            # A refused preflight answers in the API's error body, with the CORS headers kept.
            refused = await c.options(
                "/models",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
            )
            assert refused.status_code == 400
            assert refused.headers["content-type"] == "application/json"
            assert refused.json() == {
                "error": "cors_forbidden",
                "message": "CORS preflight refused",
                "details": {"refused": ["origin"], "reason": "Disallowed CORS origin"},
            }
            assert "access-control-allow-origin" not in refused.headers
            assert refused.headers["x-request-id"]


async def test_no_cors_headers_without_configuration(client: httpx.AsyncClient) -> None:
    r = await client.get("/health", headers={"Origin": "https://robot.example"})
    assert "access-control-allow-origin" not in r.headers


async def test_openapi_documents_tags_errors_and_auth(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    tags = {t["name"] for t in doc["tags"]}
    assert {"auth", "users", "models", "monitoring"} <= tags
    paths = doc["paths"]
    for path in (
        "/health",
        "/auth/login",
        "/auth/logout",
        "/auth/me",
        "/users",
        "/users/{user_id}",
        "/models",
        "/models/upload",
        "/models/{model_id}",
        "/models/{model_id}/download",
        "/models/{model_id}/evaluation-data",
        "/monitoring/system",
        "/monitoring/sessions/metrics",
        "/monitoring/health/detailed",
        "/metrics",
    ):
        assert path in paths, path
    upload = paths["/models/upload"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    for code in ("401", "413", "422"):
        example = upload["responses"][code]["content"]["application/json"]["example"]
        assert set(example) == {"error", "message", "details"}
    # Generated 422 responses document the spec's error body, not FastAPI's default.
    assert "HTTPValidationError" not in str(doc)
    listing_422 = paths["/models"]["get"]["responses"]["422"]["content"]["application/json"]
    assert listing_422["schema"]["$ref"].endswith("/ErrorBody")
    login = paths["/auth/login"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-www-form-urlencoded"} <= set(login)
    schemes = doc["components"]["securitySchemes"]
    assert any(
        s.get("type") == "oauth2" and s["flows"]["password"]["tokenUrl"] == "/auth/login"
        for s in schemes.values()
    )
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/redoc")).status_code == 200


async def test_access_log_escapes_control_characters(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="robopt.access"):
        r = await client.get("/nothing%0A2026-01-01 INFO forged line")
    assert r.status_code == 404
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "robopt.access"]
    assert any("\\x0a2026-01-01" in line for line in lines)
    assert not any("\n" in line for line in lines)
