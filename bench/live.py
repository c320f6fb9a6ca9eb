"""A live `python -m api` server for the benchmarks: a free port, a temporary DATA_DIR, the admin login.

    with live_server(tmp_path) as server:
        headers = server.login()
        ... httpx against server.base_url ...

Embedded defaults (SQLite under DATA_DIR, the in-process executor, the rules planner): every API_*,
DATABASE_URL, DATA_DIR, MAX_UPLOAD_MB and ENVIRONMENT variable of the caller's environment is dropped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
USERNAME = "admin"
PASSWORD = "bench-admin-password"
DROPPED_ENV = ("API_", "DATABASE_URL", "DATA_DIR", "MAX_UPLOAD_MB", "ENVIRONMENT")


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    base_url: str
    data_dir: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def login(self) -> dict[str, str]:
        """The admin's bearer header."""
        r = httpx.post(
            f"{self.base_url}/auth/login", json={"username": USERNAME, "password": PASSWORD}, timeout=60
        )
        if r.status_code != 200:
            raise ServerError(f"login answered {r.status_code}: {r.text[:500]}")
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@contextmanager
def live_server(
    tmp_path: Path, extra_env: dict[str, str] | None = None, start_timeout_s: float = 120
) -> Iterator[LiveServer]:
    """Start the server on a free port with DATA_DIR under `tmp_path`; SIGTERM it on exit.

    Raises ServerError (with the end of the server's log) when it does not answer /health in time.
    """
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV)}
    env.update(
        {
            "DATA_DIR": str(data_dir),
            "API_HOST": "127.0.0.1",
            "API_PORT": str(port),
            "API_RELOAD": "false",
            "API_LOG_LEVEL": "warning",
            "ADMIN_USERNAME": USERNAME,
            "ADMIN_PASSWORD": PASSWORD,
            "ENVIRONMENT": "development",
            "PYTHONPATH": str(REPO_ROOT),
            **(extra_env or {}),
        }
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "api"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        server = LiveServer(process, base_url, data_dir, log_path)
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise ServerError(f"the server did not start\n{server.log_tail()}")
                try:
                    if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
            yield server
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
