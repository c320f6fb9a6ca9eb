"""User administration (admins only): create, list, update (role, password, disable)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query
from sqlalchemy import func
from sqlmodel import col, select

from api.deps import AdminUser, AuthCacheDep, DbDep
from api.errors import ApiError, error_responses
from api.log import security_event
from api.schemas.common import MAX_PAGE_OFFSET
from api.schemas.users import UserCreate, UserList, UserPublic, UserUpdate
from api.security import hash_password
from state.users import User

router = APIRouter(prefix="/users", tags=["users"])


@router.post(
    "",
    response_model=UserPublic,
    summary="Create a user",
    responses=error_responses(401, 403, 409, 422),
)
async def create_user(body: UserCreate, admin: AdminUser, db: DbDep) -> UserPublic:
    existing = (await db.exec(select(User).where(User.username == body.username))).first()
    if existing is not None:
        raise ApiError(409, "conflict", f"Username '{body.username}' is taken")
    hashed = await asyncio.to_thread(hash_password, body.password)
    user = User(username=body.username, hashed_password=hashed, role=body.role)
    db.add(user)
    await db.commit()
    await db.refresh(user)
    security_event("user_created", by=admin.id, user_id=user.id, role=user.role)
    return UserPublic.model_validate(user)


@router.get("", response_model=UserList, summary="List users", responses=error_responses(401, 403, 422))
async def list_users(
    _admin: AdminUser,
    db: DbDep,
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=MAX_PAGE_OFFSET),
) -> UserList:
    total = (await db.exec(select(func.count()).select_from(User))).one()
    rows = (
        await db.exec(
            select(User).order_by(col(User.created_at).desc(), col(User.id)).offset(offset).limit(limit)
        )
    ).all()
    return UserList(
        items=[UserPublic.model_validate(u) for u in rows], total=total, limit=limit, offset=offset
    )


@router.patch(
    "/{user_id}",
    response_model=UserPublic,
    summary="Change a user's role, password or active flag",
    responses=error_responses(401, 403, 404, 409, 422),
)
async def update_user(
    user_id: str, body: UserUpdate, admin: AdminUser, db: DbDep, auth_cache: AuthCacheDep
) -> UserPublic:
    user = await db.get(User, user_id)
    if user is None:
        raise ApiError(404, "not_found", "User not found")
    if user.id == admin.id and (body.is_active is False or body.role == "user"):
        # Keeps at least the acting admin able to administer.
        raise ApiError(409, "conflict", "Administrators cannot disable or demote themselves")
    if body.role is not None:
        user.role = body.role
    if body.is_active is not None:
        user.is_active = body.is_active
    if body.password is not None:
        user.hashed_password = await asyncio.to_thread(hash_password, body.password)
    db.add(user)
    await db.commit()
    await db.refresh(user)
    # Cached lookups of this user end now (role, disable), on every replica through the event bus.
    await auth_cache.invalidate_user(user.id)
    security_event(
        "user_updated",
        by=admin.id,
        user_id=user.id,
        role=user.role,
        is_active=user.is_active,
        password_changed=body.password is not None,
    )
    return UserPublic.model_validate(user)
