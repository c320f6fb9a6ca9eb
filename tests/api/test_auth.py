"""Login (JSON and OAuth2 form), tokens (missing, expired, revoked, forged, alg=none), rate limiting."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from fastapi import FastAPI

from api.main import create_app
from api.security import InsecureConfigurationError, check_production_settings
from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME, AuthHeaders, make_settings


def _claims(sub: str, **overrides: object) -> dict[str, object]:
    now = datetime.now(UTC)
    claims: dict[str, object] = {
        "sub": sub,
        "role": "admin",
        "jti": secrets.token_hex(8),
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(minutes=5),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_login_with_json_returns_a_bearer_token(client: httpx.AsyncClient) -> None:
    r = await client.post("/auth/login", json={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 60 * 60
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "HS256"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert {"exp", "iat", "nbf", "jti", "sub", "role"} <= set(claims)
    assert claims["role"] == "admin"


async def test_login_with_oauth2_form_for_swagger(client: httpx.AsyncClient) -> None:
    r = await client.post("/auth/login", data={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD})
    assert r.status_code == 200
    me = await client.get("/auth/me", headers=_bearer(r.json()["access_token"]))
    assert me.status_code == 200 and me.json()["username"] == ADMIN_USERNAME


async def test_login_wrong_password_and_unknown_user(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="robopt.security"):
        r = await client.post("/auth/login", json={"username": ADMIN_USERNAME, "password": "nope"})
        r2 = await client.post("/auth/login", json={"username": "ghost", "password": "nope"})
    for resp in (r, r2):
        assert resp.status_code == 401
        assert resp.json() == {
            "error": "invalid_credentials",
            "message": "Incorrect username or password",
            "details": None,
        }
    events = [rec.getMessage() for rec in caplog.records if rec.name == "robopt.security"]
    assert any("login_failed" in e and "bad_password" in e for e in events)
    assert any("login_failed" in e and "unknown_user" in e for e in events)
    # The security log lines carry the id of the request that caused them.
    ids = {rec.request_id for rec in caplog.records if rec.name == "robopt.security"}  # type: ignore[attr-defined]
    assert "-" not in ids and {r.headers["x-request-id"], r2.headers["x-request-id"]} <= ids


async def test_login_validation_errors_use_the_error_body(client: httpx.AsyncClient) -> None:
    r = await client.post("/auth/login", json={"username": "admin"})
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "validation_error"
    assert "password" in body["details"]
    r = await client.post("/auth/login", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "validation_error"


async def test_login_rate_limit_per_client_and_username(client: httpx.AsyncClient, settings) -> None:  # type: ignore[no-untyped-def]
    for _ in range(settings.login_rate_limit):
        r = await client.post("/auth/login", json={"username": ADMIN_USERNAME, "password": "wrong"})
        assert r.status_code == 401
    # Now even the right password is refused until the window passes.
    r = await client.post("/auth/login", json={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD})
    assert r.status_code == 429
    assert r.json()["error"] == "rate_limited"
    retry_after = int(r.headers["retry-after"])
    assert 1 <= retry_after <= settings.login_rate_window_s
    # Another username from the same client is not affected.
    r = await client.post("/auth/login", json={"username": "someone-else", "password": "wrong"})
    assert r.status_code == 401


async def test_rate_limit_window_expires(tmp_path, db_url) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_settings(tmp_path / "data", db_url, login_rate_limit=2, login_rate_window_s=1))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            for _ in range(2):
                assert (
                    await c.post("/auth/login", json={"username": "admin", "password": "x"})
                ).status_code == 401
            assert (
                await c.post("/auth/login", json={"username": "admin", "password": "x"})
            ).status_code == 429
            time.sleep(1.1)
            ok = await c.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
            assert ok.status_code == 200


async def test_missing_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/auth/me")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"] == "unauthorized"
    r = await client.get("/models", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert r.status_code == 401


async def test_garbage_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/auth/me", headers=_bearer("not.a.jwt"))
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"


async def test_expired_token(client: httpx.AsyncClient, app: FastAPI, admin_headers: AuthHeaders) -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    token = jwt.encode(
        _claims(admin_headers.user_id, iat=past, nbf=past, exp=past + timedelta(minutes=5)),
        app.state.jwt_secret,
        algorithm="HS256",
    )
    r = await client.get("/auth/me", headers=_bearer(token))
    assert r.status_code == 401


async def test_token_not_yet_valid(
    client: httpx.AsyncClient, app: FastAPI, admin_headers: AuthHeaders
) -> None:
    future = datetime.now(UTC) + timedelta(hours=1)
    token = jwt.encode(_claims(admin_headers.user_id, nbf=future), app.state.jwt_secret, algorithm="HS256")
    assert (await client.get("/auth/me", headers=_bearer(token))).status_code == 401


@pytest.mark.parametrize("missing", ["exp", "iat", "nbf", "jti", "sub", "role"])
async def test_token_missing_a_required_claim(
    client: httpx.AsyncClient, app: FastAPI, admin_headers: AuthHeaders, missing: str
) -> None:
    claims = _claims(admin_headers.user_id)
    claims.pop(missing)
    token = jwt.encode(claims, app.state.jwt_secret, algorithm="HS256")
    assert (await client.get("/auth/me", headers=_bearer(token))).status_code == 401


async def test_forged_token_signed_with_another_key(
    client: httpx.AsyncClient, admin_headers: AuthHeaders
) -> None:
    token = jwt.encode(_claims(admin_headers.user_id), secrets.token_urlsafe(48), algorithm="HS256")
    assert (await client.get("/auth/me", headers=_bearer(token))).status_code == 401


async def test_tampered_payload_is_refused(client: httpx.AsyncClient, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("user")
    header, payload, signature = user.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    token = f"{header}.{forged_payload}.{signature}"
    assert (await client.get("/users", headers=_bearer(token))).status_code == 401


async def test_alg_none_token_is_refused(client: httpx.AsyncClient, admin_headers: AuthHeaders) -> None:
    def b64(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "sub": admin_headers.user_id,
        "role": "admin",
        "jti": "x" * 16,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    for alg in ("none", "None", "NONE"):
        token = f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims)}."
        assert (await client.get("/auth/me", headers=_bearer(token))).status_code == 401


async def test_other_algorithm_with_the_right_secret_is_refused(
    client: httpx.AsyncClient, app: FastAPI, admin_headers: AuthHeaders
) -> None:
    token = jwt.encode(_claims(admin_headers.user_id), app.state.jwt_secret, algorithm="HS512")
    assert (await client.get("/auth/me", headers=_bearer(token))).status_code == 401


async def test_logout_revokes_the_token(client: httpx.AsyncClient, admin_headers: AuthHeaders) -> None:
    r = await client.post("/auth/logout", headers=admin_headers)
    assert r.status_code == 200 and r.json()["revoked"] is True
    r = await client.get("/auth/me", headers=admin_headers)
    assert r.status_code == 401
    assert r.json()["message"] == "Token has been revoked"
    # A new login works; the old token stays revoked.
    r = await client.post("/auth/login", json={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD})
    assert (await client.get("/auth/me", headers=_bearer(r.json()["access_token"]))).status_code == 200
    assert (await client.get("/auth/me", headers=admin_headers)).status_code == 401


async def test_revocation_survives_a_restart(tmp_path, db_url) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "data", db_url)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            token = (
                await c.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
            ).json()["access_token"]
            assert (await c.post("/auth/logout", headers=_bearer(token))).status_code == 200
    app2 = create_app(settings)
    async with app2.router.lifespan_context(app2):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app2), base_url="http://t") as c:
            assert (await c.get("/auth/me", headers=_bearer(token))).status_code == 401


async def test_secret_is_generated_once_with_private_permissions(client: httpx.AsyncClient, settings) -> None:  # type: ignore[no-untyped-def]
    path = settings.data_dir / ".jwt_secret"
    assert path.is_file()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(path.read_text().strip()) >= 32


async def test_secret_from_environment_is_used(tmp_path, db_url) -> None:  # type: ignore[no-untyped-def]
    secret = secrets.token_urlsafe(40)
    app = create_app(make_settings(tmp_path / "data", db_url, jwt_secret_key=secret))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            token = (
                await c.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
            ).json()["access_token"]
    jwt.decode(token, secret, algorithms=["HS256"])  # raises if signed with anything else
    assert not (tmp_path / "data" / ".jwt_secret").exists()


async def test_disabled_user_cannot_log_in_and_loses_access(
    client: httpx.AsyncClient, admin_headers, make_user
) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("user")
    r = await client.patch(f"/users/{user.user_id}", json={"is_active": False}, headers=admin_headers)
    assert r.status_code == 200 and r.json()["is_active"] is False
    assert (await client.get("/auth/me", headers=user)).status_code == 401
    r = await client.post("/auth/login", json={"username": user.username, "password": "user-test-password-1"})
    assert r.status_code == 401


def test_production_refuses_default_secret_or_password(tmp_path) -> None:  # type: ignore[no-untyped-def]
    strong_secret = secrets.token_urlsafe(48)
    bad = [
        {"jwt_secret_key": None, "admin_password": "a-strong-admin-passphrase"},
        {"jwt_secret_key": "changeme", "admin_password": "a-strong-admin-passphrase"},
        {"jwt_secret_key": strong_secret, "admin_password": None},
        {"jwt_secret_key": strong_secret, "admin_password": "admin"},
    ]
    for overrides in bad:
        s = make_settings(tmp_path, None, environment="production", **overrides)
        with pytest.raises(InsecureConfigurationError):
            check_production_settings(s)
    check_production_settings(
        make_settings(
            tmp_path,
            None,
            environment="production",
            jwt_secret_key=strong_secret,
            admin_password="a-strong-admin-passphrase",
        )
    )


async def test_production_app_does_not_start_with_defaults(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_settings(tmp_path / "data", None, environment="production", admin_password=None))
    with pytest.raises(InsecureConfigurationError):
        async with app.router.lifespan_context(app):
            pass


async def test_default_admin_password_warns_in_development(
    tmp_path, db_url, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_settings(tmp_path / "data", db_url, admin_password=None))
    with caplog.at_level(logging.WARNING, logger="robopt.api"):
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                r = await c.post("/auth/login", json={"username": "admin", "password": "admin"})
                assert r.status_code == 200
    assert any("default password" in rec.getMessage() for rec in caplog.records)


def test_cli_refuses_to_serve_in_production_with_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from api import cli
    from state.settings import get_settings

    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    get_settings.cache_clear()
    try:
        assert cli.main(["serve"]) == 2  # returns before uvicorn starts
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert "JWT_SECRET_KEY" in err and "ADMIN_PASSWORD" in err


async def _login_status(app: FastAPI, username: str, password: str) -> int:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return (await c.post("/auth/login", json={"username": username, "password": password})).status_code


async def test_production_start_replaces_a_leftover_default_admin_password(
    tmp_path, db_url, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    dev = create_app(make_settings(data, db_url, admin_password=None))
    async with dev.router.lifespan_context(dev):
        assert await _login_status(dev, "admin", "admin") == 200  # created as admin/admin
    strong = "a-strong-admin-passphrase"
    prod = create_app(
        make_settings(
            data,
            db_url,
            environment="production",
            admin_password=strong,
            jwt_secret_key=secrets.token_urlsafe(48),
        )
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        async with prod.router.lifespan_context(prod):
            assert await _login_status(prod, "admin", "admin") == 401
            assert await _login_status(prod, "admin", strong) == 200
    messages = [rec.getMessage() for rec in caplog.records]
    assert any("admin_default_password_replaced" in m for m in messages)
    assert not any("has the default password" in m for m in messages)


async def test_a_changed_admin_password_is_not_overwritten_at_start(tmp_path, db_url) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    app = create_app(make_settings(data, db_url))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            token = (
                await c.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
            ).json()["access_token"]
            me = (await c.get("/auth/me", headers=_bearer(token))).json()
            r = await c.patch(
                f"/users/{me['id']}", json={"password": "changed-through-the-api-1"}, headers=_bearer(token)
            )
            assert r.status_code == 200, r.text
    again = create_app(make_settings(data, db_url, admin_password="another-configured-password"))
    async with again.router.lifespan_context(again):
        assert await _login_status(again, "admin", "changed-through-the-api-1") == 200
        assert await _login_status(again, "admin", "another-configured-password") == 401


async def test_parallel_wrong_guesses_cannot_pass_the_rate_limit(
    client: httpx.AsyncClient, settings, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from api.routers import auth as auth_router

    verified: list[str] = []
    real_verify = auth_router.verify_password

    def slow_verify(password: str, hashed: str | None) -> bool:
        verified.append(password)
        time.sleep(0.2)  # argon2 with production parameters: every request is in flight at once
        return real_verify(password, hashed)

    monkeypatch.setattr(auth_router, "verify_password", slow_verify)
    guesses = [f"guess-{i}" for i in range(30)]
    responses = await asyncio.gather(
        *(client.post("/auth/login", json={"username": ADMIN_USERNAME, "password": g}) for g in guesses)
    )
    statuses = sorted(r.status_code for r in responses)
    limit = settings.login_rate_limit
    assert statuses == [401] * limit + [429] * (len(guesses) - limit)
    assert len(verified) == limit
    # The window is full: the right password is refused too.
    r = await client.post("/auth/login", json={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD})
    assert r.status_code == 429


async def test_rate_limit_is_keyed_per_client_and_username(app: FastAPI, client, make_user, settings) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("user")

    def from_address(host: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(host, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://t")

    async with from_address("10.0.0.1") as attacker, from_address("10.0.0.2") as other:
        for _ in range(settings.login_rate_limit):
            r = await attacker.post("/auth/login", json={"username": ADMIN_USERNAME, "password": "wrong"})
            assert r.status_code == 401
        r = await attacker.post("/auth/login", json={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD})
        assert r.status_code == 429
        # Another username from the same client is not blocked: it can still log in.
        r = await attacker.post(
            "/auth/login", json={"username": user.username, "password": "user-test-password-1"}
        )
        assert r.status_code == 200
        # The same username from another client is not blocked either.
        r = await other.post("/auth/login", json={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD})
        assert r.status_code == 200


async def test_oversized_login_body_is_413_without_reading_it(client: httpx.AsyncClient) -> None:
    # A declared size over the limit: refused before a byte is read.
    r = await client.post(
        "/auth/login",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": str(10 * 1024 * 1024)},
    )
    assert r.status_code == 413
    assert r.json() == {
        "error": "payload_too_large",
        "message": "Login body too large",
        "details": {"max_bytes": 16 * 1024},
    }

    # No Content-Length (chunked): reading stops just past the limit, not at the end of 64 MiB.
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(64 * 1024):
            sent.append(1)
            yield b"x" * 1024

    r = await client.post("/auth/login", content=endless(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    assert len(sent) <= 32, f"the server read {len(sent)} KiB"
    # A normal login still works, with JSON and with the form.
    r = await client.post("/auth/login", data={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD})
    assert r.status_code == 200


async def test_logout_without_a_token_is_401(client: httpx.AsyncClient) -> None:
    r = await client.post("/auth/logout")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert set(r.json()) == {"error", "message", "details"} and r.json()["error"] == "unauthorized"
