"""Authentication: login (JSON or the OAuth2 password form Swagger sends), logout, who am I."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import delete
from sqlmodel import select

from api.deps import CurrentUser, DbDep, SettingsDep, client_address
from api.errors import ApiError, error_responses
from api.log import security_event
from api.schemas.auth import LoginRequest, LogoutResponse, TokenResponse
from api.schemas.users import UserPublic
from api.security import create_access_token, verify_password
from state.users import RevokedToken, User

router = APIRouter(prefix="/auth", tags=["auth"])

_LOGIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": LoginRequest.model_json_schema()},
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
                }
            },
        },
    }
}
MAX_LOGIN_BODY = 16 * 1024  # credentials are tiny; nothing past this is read


def _too_large() -> ApiError:
    return ApiError(413, "payload_too_large", "Login body too large", {"max_bytes": MAX_LOGIN_BODY})


async def _read_limited_body(request: Request) -> bytes:
    """The body, refused with 413 when the declared or the received size passes MAX_LOGIN_BODY.

    Reading stops at the first chunk past the limit: a client cannot make the server buffer more.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > MAX_LOGIN_BODY:
                raise _too_large()
        except ValueError:
            raise ApiError(400, "bad_request", "Invalid Content-Length header") from None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_LOGIN_BODY:
            raise _too_large()
    return bytes(body)


async def _read_credentials(request: Request) -> LoginRequest:
    body = await _read_limited_body(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == "application/x-www-form-urlencoded":
            pairs = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
            raw: Any = dict(pairs)
        else:
            raw = json.loads(body or b"null")
        return LoginRequest.model_validate(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # bytes that are not UTF-8 are not JSON either
        raise ApiError(422, "validation_error", "Body is not valid JSON", str(exc)) from exc
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


@router.post(
    "/login",
    response_model=TokenResponse,
    summary="Log in and get a bearer token",
    openapi_extra=_LOGIN_BODY,
    responses=error_responses(400, 401, 413, 422, 429),
)
async def login(request: Request, db: DbDep, settings: SettingsDep) -> TokenResponse:
    """Takes `{"username", "password"}` as JSON, or the OAuth2 password form (Swagger's Authorize)."""
    credentials = await _read_credentials(request)
    limiter = request.app.state.login_limiter
    metrics = request.app.state.metrics
    client = client_address(request)

    # Check and reserve in one step, before the slow password check: concurrent guesses each take
    # a slot, so at most LOGIN_RATE_LIMIT wrong guesses per window are ever verified.
    reservation = limiter.reserve(client, credentials.username)
    if isinstance(reservation, int):
        wait = reservation
        metrics.logins.labels("rate_limited").inc()
        security_event("login_rate_limited", username=credentials.username, client=client, retry_after_s=wait)
        raise ApiError(
            429,
            "rate_limited",
            "Too many failed logins for this user from this address; retry later",
            {"retry_after_s": wait},
            headers={"Retry-After": str(wait)},
        )

    try:
        user = (await db.exec(select(User).where(User.username == credentials.username))).first()
        # argon2 is deliberately slow: verify off the event loop, and also for unknown users (timing).
        ok = await asyncio.to_thread(
            verify_password, credentials.password, user.hashed_password if user else None
        )
    except BaseException:
        limiter.release(reservation)  # no answer was given: the attempt does not count
        raise
    if not ok or user is None or not user.is_active:
        limiter.fail(reservation)
        metrics.logins.labels("failed").inc()
        reason = "unknown_user" if user is None else ("disabled" if ok else "bad_password")
        security_event("login_failed", username=credentials.username, client=client, reason=reason)
        raise ApiError(
            401,
            "invalid_credentials",
            "Incorrect username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )

    limiter.succeed(reservation)
    metrics.logins.labels("success").inc()
    token, expires_in = create_access_token(
        request.app.state.jwt_secret, user.id, user.role, settings.access_token_expire_minutes
    )
    return TokenResponse(access_token=token, token_type="bearer", expires_in=expires_in)


@router.post(
    "/logout",
    response_model=LogoutResponse,
    summary="Revoke the current token",
    responses=error_responses(401),
)
async def logout(request: Request, user: CurrentUser, db: DbDep) -> LogoutResponse:
    claims = request.state.token_claims
    now = datetime.now(UTC)
    # Expired entries can go: their tokens fail the exp check anyway.
    await db.exec(delete(RevokedToken).where(RevokedToken.expires_at < now))  # type: ignore[call-overload]
    if await db.get(RevokedToken, claims.jti) is None:
        db.add(RevokedToken(jti=claims.jti, user_id=user.id, expires_at=claims.expires_at))
    await db.commit()
    await request.app.state.auth_cache.revoke_token(claims.jti)  # here now, other replicas via the bus
    return LogoutResponse(revoked=True)


@router.get("/me", response_model=UserPublic, summary="The current user", responses=error_responses(401))
async def me(user: CurrentUser) -> UserPublic:
    return UserPublic.model_validate(user)
