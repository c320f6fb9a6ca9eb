"""The cached authenticated read path: a hit skips the database, and logout, disable and role changes
take effect on the very next request (the cache entry is dropped when the change commits)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.conftest import AuthHeaders, MakeUser


async def test_a_repeated_token_is_served_from_the_cache(
    app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user("user")
    cache = app.state.auth_cache
    assert (await client.get("/auth/me", headers=user)).status_code == 200
    hit = cache.get(user.token)
    assert hit is not None and hit.user.id == user.user_id and hit.user.role == "user"
    # A token the cache has never seen is still checked in full: a forged one is refused.
    forged = {"Authorization": "Bearer " + user.token[:-4] + "AAAA"}
    assert (await client.get("/auth/me", headers=forged)).status_code == 401


async def test_logout_refuses_the_token_at_once(
    app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user("user")
    assert (await client.get("/auth/me", headers=user)).status_code == 200
    assert app.state.auth_cache.get(user.token) is not None
    assert (await client.post("/auth/logout", headers=user)).status_code == 200
    r = await client.get("/auth/me", headers=user)
    assert r.status_code == 401 and r.json()["message"] == "Token has been revoked"


async def test_disabling_a_user_refuses_their_cached_token_at_once(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, make_user: MakeUser
) -> None:
    user = await make_user("user")
    assert (await client.get("/auth/me", headers=user)).status_code == 200
    r = await client.patch(f"/users/{user.user_id}", json={"is_active": False}, headers=admin_headers)
    assert r.status_code == 200, r.text
    r = await client.get("/auth/me", headers=user)
    assert r.status_code == 401 and r.json()["message"] == "User is unknown or disabled"
    await client.patch(f"/users/{user.user_id}", json={"is_active": True}, headers=admin_headers)
    assert (await client.get("/auth/me", headers=user)).status_code == 200


async def test_a_role_change_takes_effect_on_the_next_request(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, make_user: MakeUser
) -> None:
    user = await make_user("user")
    assert (await client.get("/users", headers=user)).status_code == 403  # cached as "user"
    r = await client.patch(f"/users/{user.user_id}", json={"role": "admin"}, headers=admin_headers)
    assert r.status_code == 200, r.text
    assert (await client.get("/users", headers=user)).status_code == 200
    r = await client.patch(f"/users/{user.user_id}", json={"role": "user"}, headers=admin_headers)
    assert r.status_code == 200, r.text
    assert (await client.get("/users", headers=user)).status_code == 403


async def test_a_lookup_in_flight_during_an_invalidation_is_not_cached(
    app: FastAPI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user("user")
    cache = app.state.auth_cache
    cache.clear()
    hit_before = cache.generation
    cache.drop_user(user.user_id)  # what a bus message does while a request reads the database
    from api.security import decode_access_token
    from state.users import User

    claims = decode_access_token(app.state.jwt_secret, user.token)
    cache.put(user.token, claims, User(id=user.user_id, username="x", hashed_password="x"), hit_before)
    assert cache.get(user.token) is None
