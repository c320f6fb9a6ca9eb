"""Shared fixtures: a real database (SQLite always, PostgreSQL when TEST_DATABASE_URL is set), the app,
an HTTP client with the app's lifespan run, logged-in headers, and a real uvicorn server.

- `db_url`: parametrized over the backends. PostgreSQL gets one fresh database per test run
  (created from TEST_DATABASE_URL's server, dropped at the end) and is emptied before each test.
- `settings` -> `app` -> `client`: `Settings(data_dir=tmp_path / "data", ...)`, `create_app(settings)`,
  an `httpx.AsyncClient` over ASGITransport inside the app's lifespan (migrations, admin bootstrap).
- `admin_headers`, `make_user(role)`: Authorization headers obtained through the real login endpoint.
- `upload_model(headers, path, **fields)`: POST /models/upload, returns the response.
- `live_server` (base URL) and `live_server_factory` (start several, pass env, kill and restart):
  `python -m api` in a subprocess on a free port with a temporary DATA_DIR.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from api.main import create_app
from api.security import configure_password_hashing
from state.db import run_migrations
from state.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin-test-password-1"
USER_PASSWORD = "user-test-password-1"
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
DB_BACKENDS = ["sqlite", *(["postgresql"] if TEST_DATABASE_URL else [])]
# Settings that the surrounding environment must not leak into a test server.
_CONTROLLED_ENV_PREFIXES = (
    "API_",
    "LLM_",
    "ADMIN_",
    "JWT_",
    "DATABASE_URL",
    "DATA_DIR",
    "MAX_UPLOAD_MB",
    "CORS_ORIGINS",
    "ENVIRONMENT",
    "LOGIN_RATE",
    "ACCESS_TOKEN",
    "MAX_CONCURRENT",
    "DEFAULT_MAX_TRIALS",
    "DEFAULT_TIME_BUDGET",
    "SSE_PING",
    "EXECUTOR",
    "RAY_",
    "RUN_",
    "WORKER_",
    "EVENT_",
    "REDIS_URL",
    "AUTH_CACHE_",
    "ARTIFACT_",
    "S3_ENDPOINT_URL",
    "COMPUTE_NICE",
    "MAX_",
    "USER_MAX_",
    "USER_STORAGE_",
    "UPLOAD_",
    "MODEL_IMPORT_",
    "IMPORT_ALLOWED_",
)
# Every knob of the one settings object, by its environment name (pydantic-settings matches them
# case-insensitively): a setting added later is controlled without being listed above.
_SETTINGS_ENV = frozenset(name.upper() for name in Settings.model_fields)


def _controlled(name: str) -> bool:
    upper = name.upper()
    return upper in _SETTINGS_ENV or upper.startswith(_CONTROLLED_ENV_PREFIXES)


# Not only live servers: the in-process settings (`make_settings`) read the environment for every
# field they are not given, so a developer's EVENT_BUS=redis or ARTIFACT_STORE=s3://... would change
# what the tests run against. Tests that need one set it themselves (monkeypatch or a server's env).
for _name in [k for k in os.environ if _controlled(k)]:
    del os.environ[_name]


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashing() -> None:
    # Real argon2id, with parameters small enough that each login costs milliseconds, not 0.4 s.
    configure_password_hashing(time_cost=1, memory_cost=1024, parallelism=1)


# --------------------------------------------------------------------------------------------
# database


def _pg_admin_conninfo(url: str) -> tuple[str, Any]:
    u = make_url(url)
    return u.render_as_string(hide_password=False).replace("postgresql+psycopg://", "postgresql://"), u


@pytest.fixture(scope="session")
def postgres_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped at the end."""
    if not TEST_DATABASE_URL:
        pytest.skip("TEST_DATABASE_URL is not set")
    import psycopg

    conninfo, base = _pg_admin_conninfo(TEST_DATABASE_URL)
    name = f"robopt_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _truncate_postgres(url: str) -> None:
    import psycopg

    conninfo = (
        make_url(url).render_as_string(hide_password=False).replace("postgresql+psycopg://", "postgresql://")
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables "
                "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            ).fetchall()
        ]
        if not tables:
            return
        try:
            # DELETE with triggers (and so foreign keys) off is ~100x faster than TRUNCATE on tiny tables.
            with conn.transaction():
                conn.execute("SET LOCAL session_replication_role = replica")
                for table in tables:
                    conn.execute(f'DELETE FROM "{table}"')
        except psycopg.errors.InsufficientPrivilege:
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per run; each test starts from a copy (DDL is slow to fsync)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "robopt.db"
    run_migrations(f"sqlite:///{path.resolve()}")
    return path


@pytest.fixture(params=DB_BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL of one test: a SQLite file in tmp_path, or the run's (emptied) PostgreSQL database.

    The app still runs its migrations at start-up; on the copied SQLite file they find it at head.
    """
    if request.param == "sqlite":
        path = tmp_path / "data" / "robopt.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path.resolve()}"
    url = request.getfixturevalue("postgres_database_url")
    _truncate_postgres(url)
    return url


# --------------------------------------------------------------------------------------------
# app and client


def make_settings(data_dir: Path, db_url: str | None = None, **overrides: Any) -> Settings:
    """Settings for a test, independent of the environment and of any .env file."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": db_url,
        "jwt_secret_key": None,
        "admin_username": ADMIN_USERNAME,
        "admin_password": ADMIN_PASSWORD,
        "max_upload_mb": 1,
        "login_rate_limit": 5,
        "login_rate_window_s": 60,
        "environment": "development",
        "cors_origins": [],
        "api_log_level": "info",
        "llm_model": None,
        "llm_api_base": None,
        "llm_api_key": None,
        # The app under an in-process test client runs sessions in-process (tests patch that process or
        # mock its LLM calls); live servers run the default worker-process executor.
        "executor": "inprocess",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path / "data", db_url)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as c:
            yield c


class AuthHeaders(dict[str, str]):
    """`{"Authorization": "Bearer ..."}` that also knows whose it is."""

    def __init__(self, token: str, user_id: str, username: str, role: str) -> None:
        super().__init__({"Authorization": f"Bearer {token}"})
        self.token = token
        self.user_id = user_id
        self.username = username
        self.role = role


async def login(client: httpx.AsyncClient, username: str, password: str) -> AuthHeaders:
    r = await client.post("/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200, me.text
    body = me.json()
    return AuthHeaders(token, body["id"], body["username"], body["role"])


@pytest.fixture
async def admin_headers(client: httpx.AsyncClient) -> AuthHeaders:
    return await login(client, ADMIN_USERNAME, ADMIN_PASSWORD)


MakeUser = Callable[..., Awaitable[AuthHeaders]]


@pytest.fixture
def make_user(client: httpx.AsyncClient, admin_headers: AuthHeaders) -> MakeUser:
    """`await make_user("user")` -> headers of a new user with that role (created by the admin)."""

    async def _make(
        role: str = "user", username: str | None = None, password: str = USER_PASSWORD
    ) -> AuthHeaders:
        username = username or f"{role}-{uuid.uuid4().hex[:8]}"
        r = await client.post(
            "/users", json={"username": username, "password": password, "role": role}, headers=admin_headers
        )
        assert r.status_code == 200, r.text
        return await login(client, username, password)

    return _make


UploadModel = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture
def upload_model(client: httpx.AsyncClient) -> UploadModel:
    """`await upload_model(headers, path, name=..., architecture=...)` -> POST /models/upload's response."""

    async def _upload(
        headers: dict[str, str], path: Path, filename: str | None = None, **fields: str
    ) -> httpx.Response:
        with open(path, "rb") as f:
            files = {"file": (filename or path.name, f, "application/octet-stream")}
            return await client.post("/models/upload", headers=headers, files=files, data=fields)

    return _upload


# --------------------------------------------------------------------------------------------
# live server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """A `python -m api` subprocess. `kill()` simulates a crash; `restart()` starts it again on the
    same port and DATA_DIR (same database, artifacts and secret)."""

    base_url: str
    port: int
    data_dir: Path
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log_files: list[Any] = field(default_factory=list)

    def start(self, timeout_s: float = 90.0) -> LiveServer:
        log = open(self.log_path, "ab")
        self._log_files.append(log)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api"], cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 15.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after `timeout_s`)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (crash tests)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait(timeout=15)

    def restart(self, timeout_s: float = 90.0) -> LiveServer:
        self.stop()
        return self.start(timeout_s)

    def close(self) -> None:
        self.stop()
        for f in self._log_files:
            f.close()


def live_server_env(data_dir: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _controlled(k)}
    env.update(
        {
            "DATA_DIR": str(data_dir),
            "API_HOST": "127.0.0.1",
            "API_PORT": str(port),
            "API_RELOAD": "false",
            "API_LOG_LEVEL": "info",
            "ADMIN_USERNAME": ADMIN_USERNAME,
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "ENVIRONMENT": "development",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


LiveServerFactory = Callable[..., LiveServer]


@pytest.fixture
def live_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServerFactory]:
    """`start(env={...}, data_dir=None)` -> a started LiveServer; all are stopped at the end of the test."""
    servers: list[LiveServer] = []

    def _start(
        env: dict[str, str] | None = None, data_dir: Path | None = None, timeout_s: float = 90.0
    ) -> LiveServer:
        root = tmp_path_factory.mktemp("live")
        data_dir = data_dir or root / "data"
        port = free_port()
        server = LiveServer(
            base_url=f"http://127.0.0.1:{port}",
            port=port,
            data_dir=data_dir,
            env=live_server_env(data_dir, port, env),
            log_path=root / "server.log",
        )
        servers.append(server)
        return server.start(timeout_s)

    yield _start
    for server in servers:
        server.close()


@pytest.fixture
def live_server(live_server_factory: LiveServerFactory) -> str:
    """Base URL of a real uvicorn server (SQLite in a temporary DATA_DIR, admin password ADMIN_PASSWORD)."""
    return live_server_factory().base_url
