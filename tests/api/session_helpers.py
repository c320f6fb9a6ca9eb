"""Helpers of the session tests: a small real policy file, waiting for a session, reading its SSE stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import torch

from tools.architectures import build_model
from tools.handle import ArchitectureRef

TERMINAL = ("completed", "failed", "cancelled")
# Wide enough that int8 matters (Linear layers hold all the weights), small enough for 2 CPU cores.
MLP_CONFIG = {"obs_dim": 32, "act_dim": 8, "hidden": [512, 512]}


def write_policy(directory: Path, config: dict[str, Any] | None = None) -> tuple[Path, str]:
    """A state dict of the registry's `mlp_policy` and the architecture JSON to upload it with."""
    ref = ArchitectureRef(name="mlp_policy", config=config or MLP_CONFIG)
    path = directory / "policy.pt"
    torch.save(build_model(ref).state_dict(), path)
    return path, ref.model_dump_json()


async def upload_policy(
    client: httpx.AsyncClient, headers: dict[str, str], directory: Path, **fields: str
) -> str:
    path, arch = write_policy(directory)
    with open(path, "rb") as f:
        r = await client.post(
            "/models/upload",
            headers=headers,
            files={"file": ("policy.pt", f, "application/octet-stream")},
            data={"name": "mlp policy", "architecture": arch, **fields},
        )
    assert r.status_code == 200, r.text
    return str(r.json()["model_id"])


async def wait_terminal(
    client: httpx.AsyncClient, headers: dict[str, str], session_id: str, timeout_s: float = 120.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        r = await client.get(f"/sessions/{session_id}/status", headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in TERMINAL:
            return body
        assert time.monotonic() < deadline, f"session still {body['status']} after {timeout_s} s"
        await asyncio.sleep(0.2)


def parse_sse(lines: Iterator[str] | list[str]) -> list[dict[str, Any]]:
    """SSE lines -> [{"id", "event", "data"}], pings (comments) dropped."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "data" in current:
                out.append(current)
            current = {}
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "data":
                current["data"] = json.loads(value)
            elif key in ("id", "event"):
                current[key] = value
    if "data" in current:
        out.append(current)
    return out


async def read_events(
    client: httpx.AsyncClient, headers: dict[str, str], session_id: str, last_id: int | None = None
) -> list[dict[str, Any]]:
    """The whole stream of a session that is finished (the stream ends after `end`)."""
    h = dict(headers)
    if last_id is not None:
        h["Last-Event-ID"] = str(last_id)
    lines: list[str] = []
    async with client.stream("GET", f"/sessions/{session_id}/events", headers=h) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            lines.append(line)
    return parse_sse(lines)
