"""The one settings object. Every knob of the service is read here, from the environment or `.env`."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Server (names from the specification).
    api_host: str = "0.0.0.0"
    api_port: int = 8000
    api_reload: bool = False
    api_log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"

    # Storage.
    data_dir: Path = Path("data")
    database_url: str | None = None  # default: SQLite file under data_dir

    # Auth.
    jwt_secret_key: str | None = None  # default: generated once, kept in data_dir with 0600
    access_token_expire_minutes: int = Field(default=60, ge=1, le=24 * 60)
    admin_username: str = "admin"
    admin_password: str | None = None
    login_rate_limit: int = Field(default=5, ge=1, description="failed logins per window")
    login_rate_window_s: int = Field(default=60, ge=1)

    # Uploads and HTTP.
    max_upload_mb: int = Field(default=500, ge=1)
    # Archives of model directories (.zip, .tar, .tar.gz): caps checked before and while extracting.
    max_archive_members: int = Field(default=10000, ge=1)
    max_unpacked_gb: float = Field(default=60.0, gt=0)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Resumable (tus) uploads under /uploads, and the per-user storage quota they are checked against.
    max_resumable_upload_gb: float = Field(default=50.0, gt=0)
    user_storage_quota_gb: float = Field(default=200.0, gt=0)
    upload_expiry_h: float = Field(default=24.0, gt=0)
    upload_cleanup_interval_s: float = Field(default=600.0, gt=0)
    # Server-side import: allow-listed directories (comma-separated; empty = import disabled) and roles.
    model_import_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    import_allowed_roles: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["admin"])
    environment: Literal["development", "production"] = "development"

    # Agent and LLM. No LLM_MODEL means the offline rules planner.
    llm_model: str | None = None
    llm_api_base: str | None = None
    llm_api_key: str | None = None
    llm_timeout_s: float = Field(default=60.0, gt=0)
    llm_max_retries: int = Field(default=2, ge=0, le=10)
    llm_temperature: float = Field(default=0.0, ge=0, le=2)

    # Optimization sessions.
    max_concurrent_sessions: int = Field(default=1, ge=1)
    default_max_trials: int = Field(default=12, ge=1, le=200)
    default_time_budget_s: float = Field(default=900.0, gt=0)
    sse_ping_s: float = Field(default=15.0, gt=0)
    # Nice value of the session compute threads (0 = the server's own priority); see agents/compute.py.
    compute_nice: int = Field(default=10, ge=0, le=19)

    # Scale-out: where sessions run, and the run table's leases (agents/executor.py, state/runs.py).
    # process: a worker process per session (default); inprocess: asyncio tasks in the API (tests that
    # patch the process); ray: Ray tasks on the cluster at RAY_ADDRESS (none: a local Ray is started).
    executor: Literal["process", "inprocess", "ray"] = "process"
    ray_address: str | None = None
    ray_num_cpus: float = Field(default=1.0, gt=0, description="CPUs a session reserves on Ray")
    # Torch threads of a session's worker (0: the machine's cores shared by MAX_CONCURRENT_SESSIONS).
    worker_torch_threads: int = Field(default=0, ge=0)
    # A worker renews its lease every RUN_HEARTBEAT_S; a lease not renewed for RUN_LEASE_S is free.
    run_lease_s: float = Field(default=15.0, gt=0)
    run_heartbeat_s: float = Field(default=3.0, gt=0)
    # Runs of one session whose worker died before it is failed (Ray: its task's retries + 1).
    run_max_attempts: int = Field(default=4, ge=1, le=100)

    # Shared storage and API replicas (issue 14). ARTIFACT_STORE: a local directory (default
    # DATA_DIR/artifacts) or s3://bucket/prefix (fsspec/s3fs; S3_ENDPOINT_URL for MinIO and the like,
    # credentials from the usual AWS_* variables); remote artifacts are read through a local cache
    # keyed by checksum. EVENT_BUS carries event wake-ups and auth invalidations between replicas:
    # auto = PostgreSQL LISTEN/NOTIFY when DATABASE_URL is PostgreSQL, else in-process only.
    artifact_store: str | None = None
    artifact_cache_dir: Path | None = None  # default DATA_DIR/artifact-cache
    s3_endpoint_url: str | None = None
    event_bus: Literal["auto", "local", "postgres", "redis"] = "auto"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # An SSE stream re-reads the log when nothing woke it for this long (a safety net, not the path).
    event_reread_s: float = Field(default=1.0, gt=0)
    # Cached token -> user lookups (api/auth_cache.py); invalidated at once through EVENT_BUS, this
    # TTL bounds a replica that misses a message. 0 turns the cache off.
    auth_cache_ttl_s: float = Field(default=5.0, ge=0)

    # Hardening (issue 15): per-user quotas and request limits (429 / 413 with the limit in the details).
    # The storage quota is user_storage_quota_gb above (uploads of every kind count against it).
    max_json_body_kb: int = Field(default=1024, ge=1, description="any request body but a file upload")
    user_max_models: int = Field(default=500, ge=1)
    user_max_active_sessions: int = Field(default=32, ge=1, description="queued or running, per user")
    user_max_queued_sessions: int = Field(default=24, ge=1, description="waiting for a slot, per user")
    user_max_sse_connections: int = Field(default=10, ge=1, description="live event streams per user")

    @field_validator("cors_origins", "model_import_dirs", "import_allowed_roles", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.run_heartbeat_s * 2 > self.run_lease_s:
            raise ValueError("RUN_HEARTBEAT_S must be at most half of RUN_LEASE_S")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'robopt.db').resolve()}"

    @property
    def session_torch_threads(self) -> int:
        if self.worker_torch_threads:
            return self.worker_torch_threads
        return max(1, (os.cpu_count() or 1) // self.max_concurrent_sessions)

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def artifact_cache_path(self) -> Path:
        return self.artifact_cache_dir or self.data_dir / "artifact-cache"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def llm_configured(self) -> bool:
        return bool(self.llm_model)

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def max_resumable_upload_bytes(self) -> int:
        return int(self.max_resumable_upload_gb * 1024**3)

    @property
    def user_storage_quota_bytes(self) -> int:
        return int(self.user_storage_quota_gb * 1024**3)

    @property
    def resumable_uploads_dir(self) -> Path:
        return self.uploads_dir / "resumable"

    @property
    def max_unpacked_bytes(self) -> int:
        return int(self.max_unpacked_gb * 1024**3)


@lru_cache
def get_settings() -> Settings:
    return Settings()
