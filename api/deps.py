"""Typed dependencies: settings, database session, artifact store, the current user, admins only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.auth_cache import AuthCache
from api.errors import ApiError
from api.log import security_event
from api.security import InvalidTokenError, decode_access_token
from state.artifacts import ArtifactStore
from state.settings import Settings
from state.users import RevokedToken, User

# auto_error=False: a missing token answers with the spec's body, raised below, not FastAPI's.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/login", auto_error=False)

_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessionmaker() as session:
        yield session


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
DbDep = Annotated[AsyncSession, Depends(get_db)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
TokenDep = Annotated[str | None, Depends(oauth2_scheme)]


def unauthorized(message: str = "Invalid or expired token") -> ApiError:
    return ApiError(401, "unauthorized", message, headers=_UNAUTHORIZED_HEADERS)


async def get_current_user(request: Request, token: TokenDep) -> User:
    if not token:
        raise unauthorized("Not authenticated: send 'Authorization: Bearer <token>'")
    cache: AuthCache = request.app.state.auth_cache
    hit = cache.get(token)
    if hit is not None:  # seen and checked within AUTH_CACHE_TTL_S, nothing invalidated it since
        request.state.token_claims = hit.claims
        return hit.user
    try:
        claims = decode_access_token(request.app.state.jwt_secret, token)
    except InvalidTokenError as exc:
        security_event("token_rejected", reason=str(exc), client=_client(request), path=request.url.path)
        raise unauthorized() from exc
    generation = cache.generation
    # One round trip for the user and the revocation check, on a cache miss only.
    revoked = select(RevokedToken.jti).where(RevokedToken.jti == claims.jti).exists()
    async with request.app.state.sessionmaker() as db:
        row = (await db.exec(select(User, revoked).where(User.id == claims.sub))).first()
    user, is_revoked = row if row is not None else (None, False)
    if is_revoked:
        security_event("revoked_token_used", user_id=claims.sub, client=_client(request))
        raise unauthorized("Token has been revoked")
    if user is None or not user.is_active:
        security_event("inactive_or_unknown_user_token", user_id=claims.sub, client=_client(request))
        raise unauthorized("User is unknown or disabled")
    cache.put(token, claims, user, generation)
    request.state.token_claims = claims
    return user


def get_auth_cache(request: Request) -> AuthCache:
    return request.app.state.auth_cache


AuthCacheDep = Annotated[AuthCache, Depends(get_auth_cache)]


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin_user(request: Request, user: CurrentUser) -> User:
    if user.role != "admin":
        security_event("admin_endpoint_forbidden", user_id=user.id, path=request.url.path)
        raise ApiError(403, "forbidden", "Administrator role required")
    return user


AdminUser = Annotated[User, Depends(get_admin_user)]


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def client_address(request: Request) -> str:
    return _client(request)
