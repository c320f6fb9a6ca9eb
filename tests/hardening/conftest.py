"""Shared pieces of the hardening tests: logging in, uploading, listing files and models of a live server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME, LiveServer


def login(base_url: str, username: str = ADMIN_USERNAME, password: str = ADMIN_PASSWORD) -> dict[str, str]:
    r = httpx.post(f"{base_url}/auth/login", json={"username": username, "password": password}, timeout=30)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def create_user(
    base_url: str, admin: dict[str, str], username: str, password: str, role: str = "user"
) -> str:
    r = httpx.post(
        f"{base_url}/users",
        json={"username": username, "password": password, "role": role},
        headers=admin,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def upload(
    base_url: str, headers: dict[str, str], path: Path, filename: str | None = None, **fields: str
) -> httpx.Response:
    with open(path, "rb") as f:
        return httpx.post(
            f"{base_url}/models/upload",
            headers=headers,
            files={"file": (filename or path.name, f, "application/octet-stream")},
            data=fields,
            timeout=120,
        )


def files_under(root: Path) -> set[str]:
    """Every file below `root` (relative paths), to compare the disk before and after."""
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def model_ids(server: LiveServer, headers: dict[str, str]) -> list[str]:
    r = httpx.get(f"{server.base_url}/models", headers=headers, params={"limit": 100}, timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return [m["id"] for m in body["items"]]
