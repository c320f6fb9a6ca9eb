"""Health and monitoring schemas."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas.common import UtcDatetime


class HealthResponse(BaseModel):
    status: Literal["ok"]
    version: str
    database: Literal["ok"]
    time: UtcDatetime


class GpuInfo(BaseModel):
    index: int
    name: str
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    utilization_percent: float | None = None


class SystemStatus(BaseModel):
    version: str
    uptime_s: float
    cpu_percent: float
    cpu_count: int
    load_average: list[float] | None
    memory_total_bytes: int
    memory_used_bytes: int
    memory_percent: float
    disk_total_bytes: int
    disk_used_bytes: int
    disk_free_bytes: int
    disk_percent: float
    gpus: list[GpuInfo]
    gpu_available: bool
    scope: Literal["own", "all"] = Field(
        description="Whose models and sessions the counts cover: the caller's own, or all (admins)."
    )
    model_count: int = Field(description="Models of the caller (all models for admins).")
    model_storage_bytes: int = Field(description="Their stored size (all models for admins).")
    active_sessions: int = Field(description="Queued + running sessions of the caller (all for admins).")
    process_rss_bytes: int


class SessionMetrics(BaseModel):
    available: bool = Field(description="False until the optimization sessions table exists.")
    total: int = 0
    active: int = Field(default=0, description="queued + running")
    by_status: dict[str, int] = Field(default_factory=dict)
    max_concurrent_sessions: int
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Further figures from the session runner."
    )


class ComponentHealth(BaseModel):
    ok: bool
    detail: dict[str, Any] = Field(default_factory=dict)


class DetailedHealth(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    environment: str
    components: dict[str, ComponentHealth]
