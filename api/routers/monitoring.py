"""Health, system status, session metrics, detailed health and Prometheus metrics."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import func
from sqlmodel import select

from api import __version__
from api.deps import CurrentUser, DbDep, SettingsDep
from api.errors import ApiError, error_responses
from api.schemas.monitoring import (
    ComponentHealth,
    DetailedHealth,
    GpuInfo,
    HealthResponse,
    SessionMetrics,
    SystemStatus,
)
from api.session_usage import active_count, session_counts
from state.db import is_sqlite, ping
from state.registry import ModelRecord
from state.settings import Settings

router = APIRouter(tags=["monitoring"])

MIN_FREE_DISK_BYTES = 1 << 30


@router.get(
    "/health",
    response_model=HealthResponse,
    summary="Basic health check (no authentication)",
    responses=error_responses(503),
)
async def health(request: Request) -> HealthResponse:
    if not await ping(request.app.state.engine):
        raise ApiError(503, "service_unavailable", "Database unreachable", {"version": __version__})
    return HealthResponse(status="ok", version=__version__, database="ok", time=datetime.now(UTC))


def gpu_info() -> list[GpuInfo]:
    """GPUs through NVML when installed, else torch.cuda; empty on a CPU-only machine."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            out = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
                name = pynvml.nvmlDeviceGetName(h)
                out.append(
                    GpuInfo(
                        index=i,
                        name=name.decode() if isinstance(name, bytes) else str(name),
                        memory_total_bytes=int(mem.total),
                        memory_used_bytes=int(mem.used),
                        utilization_percent=float(util.gpu),
                    )
                )
            return out
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            out.append(
                GpuInfo(
                    index=i,
                    name=torch.cuda.get_device_name(i),
                    memory_total_bytes=int(total),
                    memory_used_bytes=int(total - free),
                )
            )
        return out
    except Exception:
        return []


def _system_figures(data_dir: Path) -> dict[str, Any]:
    data_dir.mkdir(parents=True, exist_ok=True)
    mem = psutil.virtual_memory()
    disk = shutil.disk_usage(data_dir)
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    gpus = gpu_info()
    return {
        "cpu_percent": psutil.cpu_percent(interval=0.1),
        "cpu_count": psutil.cpu_count() or 1,
        "load_average": load,
        "memory_total_bytes": mem.total,
        "memory_used_bytes": mem.total - mem.available,
        "memory_percent": mem.percent,
        "disk_total_bytes": disk.total,
        "disk_used_bytes": disk.used,
        "disk_free_bytes": disk.free,
        "disk_percent": round(100.0 * disk.used / disk.total, 2) if disk.total else 0.0,
        "gpus": gpus,
        "gpu_available": bool(gpus),
        "process_rss_bytes": psutil.Process().memory_info().rss,
    }


@router.get(
    "/monitoring/system",
    response_model=SystemStatus,
    summary="System status: CPU, memory, disk, GPU; your models and sessions (all for admins)",
    responses=error_responses(401),
)
async def system_status(
    request: Request, user: CurrentUser, db: DbDep, settings: SettingsDep
) -> SystemStatus:
    figures = await asyncio.to_thread(_system_figures, Path(settings.data_dir))
    # Machine-wide figures for everyone; models and sessions only the caller's (all for admins).
    everything = user.role == "admin"
    query = select(func.count(), func.coalesce(func.sum(ModelRecord.size_bytes), 0)).select_from(ModelRecord)
    if not everything:
        query = query.where(ModelRecord.owner_id == user.id)
    count, storage = (await db.exec(query)).one()
    counts = await session_counts(db, owner_id=None if everything else user.id)
    return SystemStatus(
        version=__version__,
        uptime_s=round(time.monotonic() - request.app.state.started_at, 3),
        scope="all" if everything else "own",
        model_count=int(count),
        model_storage_bytes=int(storage),
        active_sessions=active_count(counts),
        **figures,
    )


async def collect_session_metrics(
    request: Request, db: DbDep, user: Any, settings: Settings
) -> SessionMetrics:
    """Session figures; the session runner may add more through `app.state.session_metrics_extra`."""
    counts = await session_counts(db, owner_id=None if user.role == "admin" else user.id)
    extra: dict[str, Any] = {}
    provider = getattr(request.app.state, "session_metrics_extra", None)
    if provider is not None:
        extra = await provider(db, user)
    return SessionMetrics(
        available=counts is not None,
        total=sum((counts or {}).values()),
        active=active_count(counts),
        by_status=counts or {},
        max_concurrent_sessions=settings.max_concurrent_sessions,
        extra=extra,
    )


@router.get(
    "/monitoring/sessions/metrics",
    response_model=SessionMetrics,
    summary="Optimization session metrics (a user's own; all for admins)",
    responses=error_responses(401),
)
async def sessions_metrics(
    request: Request, user: CurrentUser, db: DbDep, settings: SettingsDep
) -> SessionMetrics:
    return await collect_session_metrics(request, db, user, settings)


def _disk_health(data_dir: Path) -> ComponentHealth:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        disk = shutil.disk_usage(data_dir)
        writable = os.access(data_dir, os.W_OK)
        return ComponentHealth(
            ok=writable and disk.free >= MIN_FREE_DISK_BYTES,
            detail={
                "path": str(data_dir.resolve()),
                "free_bytes": disk.free,
                "writable": writable,
                "min_free_bytes": MIN_FREE_DISK_BYTES,
            },
        )
    except OSError as exc:
        return ComponentHealth(ok=False, detail={"error": str(exc)})


@router.get(
    "/monitoring/health/detailed",
    response_model=DetailedHealth,
    summary="Detailed health: database, disk, checkpoint store, GPU, LLM configuration",
    responses=error_responses(401),
)
async def detailed_health(request: Request, _user: CurrentUser, settings: SettingsDep) -> DetailedHealth:
    engine = request.app.state.engine
    started = time.perf_counter()
    db_ok = await ping(engine)
    db_ms = round((time.perf_counter() - started) * 1000, 2)
    url = settings.resolved_database_url
    backend = "sqlite" if is_sqlite(url) else "postgresql"
    disk = await asyncio.to_thread(_disk_health, Path(settings.data_dir))
    # LangGraph checkpoints live next to the tables: the SQLite file's folder, or the same PostgreSQL.
    checkpoint = ComponentHealth(
        ok=db_ok and (backend != "sqlite" or disk.detail.get("writable", False)),
        detail={
            "backend": backend,
            "location": str(Path(settings.data_dir).resolve()) if backend == "sqlite" else "database",
        },
    )
    gpus = await asyncio.to_thread(gpu_info)
    components = {
        "database": ComponentHealth(ok=db_ok, detail={"backend": backend, "latency_ms": db_ms}),
        "disk": disk,
        "checkpoint_store": checkpoint,
        # No GPU is a valid configuration (CPU policies); it is reported, not failed.
        "gpu": ComponentHealth(ok=True, detail={"available": bool(gpus), "devices": [g.name for g in gpus]}),
        "llm": ComponentHealth(
            ok=True,
            detail={
                "configured": settings.llm_configured,
                "model": settings.llm_model,
                "api_base_set": bool(settings.llm_api_base),
                "api_key_set": bool(settings.llm_api_key),
                "planner": "llm" if settings.llm_configured else "rules (offline)",
            },
        ),
    }
    status = "ok" if all(c.ok for c in components.values()) else "degraded"
    return DetailedHealth(
        status=status, version=__version__, environment=settings.environment, components=components
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **error_responses(401)},
)
async def metrics(request: Request, _user: CurrentUser) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
