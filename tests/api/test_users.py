"""User administration and roles."""

from __future__ import annotations

import httpx

from tests.conftest import USER_PASSWORD, AuthHeaders, MakeUser


async def test_admin_creates_lists_and_updates_users(
    client: httpx.AsyncClient, admin_headers: AuthHeaders
) -> None:
    r = await client.post(
        "/users", json={"username": "alice", "password": "alice-passphrase"}, headers=admin_headers
    )
    assert r.status_code == 200, r.text
    alice = r.json()
    assert alice["username"] == "alice" and alice["role"] == "user" and alice["is_active"] is True
    assert "password" not in alice and "hashed_password" not in alice
    assert alice["created_at"].endswith("Z")

    r = await client.get("/users", headers=admin_headers)
    assert r.status_code == 200
    names = {u["username"] for u in r.json()["items"]}
    assert names == {"admin", "alice"} and r.json()["total"] == 2

    r = await client.patch(f"/users/{alice['id']}", json={"role": "admin"}, headers=admin_headers)
    assert r.status_code == 200 and r.json()["role"] == "admin"
    # The new admin can use admin endpoints with a fresh login.
    token = (
        await client.post("/auth/login", json={"username": "alice", "password": "alice-passphrase"})
    ).json()
    r = await client.get("/users", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert r.status_code == 200


async def test_password_change_takes_effect(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, make_user: MakeUser
) -> None:
    user = await make_user("user")
    r = await client.patch(
        f"/users/{user.user_id}", json={"password": "a-new-passphrase"}, headers=admin_headers
    )
    assert r.status_code == 200
    old = await client.post("/auth/login", json={"username": user.username, "password": USER_PASSWORD})
    new = await client.post("/auth/login", json={"username": user.username, "password": "a-new-passphrase"})
    assert old.status_code == 401 and new.status_code == 200


async def test_duplicate_username_is_409(client: httpx.AsyncClient, admin_headers: AuthHeaders) -> None:
    body = {"username": "bob", "password": "bob-passphrase"}
    assert (await client.post("/users", json=body, headers=admin_headers)).status_code == 200
    r = await client.post("/users", json=body, headers=admin_headers)
    assert r.status_code == 409 and r.json()["error"] == "conflict"


async def test_user_validation(client: httpx.AsyncClient, admin_headers: AuthHeaders) -> None:
    for body in (
        {"username": "x", "password": "long-enough"},  # name too short
        {"username": "carol", "password": "short"},  # password too short
        {"username": "carol", "password": "long-enough", "role": "root"},  # unknown role
        {"username": "bad name!", "password": "long-enough"},
    ):
        r = await client.post("/users", json=body, headers=admin_headers)
        assert r.status_code == 422, body
        assert r.json()["error"] == "validation_error"
    r = await client.patch("/users/whatever", json={"is_admin": True}, headers=admin_headers)
    assert r.status_code == 422  # unknown fields are refused, not ignored


async def test_non_admin_gets_403_on_admin_endpoints(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user("user")
    for method, url, body in (
        ("GET", "/users", None),
        ("POST", "/users", {"username": "eve", "password": "eve-passphrase"}),
        ("PATCH", f"/users/{user.user_id}", {"role": "admin"}),
    ):
        r = await client.request(method, url, json=body, headers=user)
        assert r.status_code == 403, (method, url)
        assert r.json() == {"error": "forbidden", "message": "Administrator role required", "details": None}
    # And it did not promote itself.
    assert (await client.get("/auth/me", headers=user)).json()["role"] == "user"


async def test_admin_cannot_disable_or_demote_itself(
    client: httpx.AsyncClient, admin_headers: AuthHeaders
) -> None:
    for body in ({"is_active": False}, {"role": "user"}):
        r = await client.patch(f"/users/{admin_headers.user_id}", json=body, headers=admin_headers)
        assert r.status_code == 409
    assert (await client.get("/auth/me", headers=admin_headers)).status_code == 200


async def test_update_unknown_user_is_404(client: httpx.AsyncClient, admin_headers: AuthHeaders) -> None:
    r = await client.patch("/users/" + "0" * 32, json={"is_active": False}, headers=admin_headers)
    assert r.status_code == 404 and r.json()["error"] == "not_found"


async def test_me_shows_the_current_user(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user("user")
    r = await client.get("/auth/me", headers=user)
    assert r.status_code == 200
    assert r.json()["id"] == user.user_id and r.json()["role"] == "user"
