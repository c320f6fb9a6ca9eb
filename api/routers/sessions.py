"""Optimization sessions: start, list, status, cancel, rollback, results, live events, chat.

Owner-scoped like models: another user's session answers 404 (administrators see all).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy import bindparam, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sse_starlette import EventSourceResponse

from agents.compute import run_isolated
from agents.runner import RollbackError
from api.deps import CurrentUser, DbDep, SettingsDep, StoreDep
from api.errors import ApiError, error_responses
from api.model_files import RUNNABLE_FORMATS, FormatReport, ProbedSignature, ToolError, probe_input_spec
from api.quotas import check_session_quota
from api.routers.models import get_owned_model, parse_input_signature, stored_artifact
from api.schemas.common import MAX_PAGE_OFFSET
from api.schemas.sessions import (
    CancelResponse,
    MessageIn,
    MessageList,
    MessageOut,
    OptimizeRequest,
    OptimizeResponse,
    RollbackRequest,
    RollbackResponse,
    SessionList,
    SessionResults,
    SessionStatus,
    SessionStatusName,
    SessionSummary,
)
from api.sse import session_events
from state.artifacts import ArtifactStore
from state.registry import ModelRecord
from state.sessions import TERMINAL_STATUSES, OptimizationSession, SessionMessage
from state.users import User, utcnow
from tools.handle import ArchitectureRef

router = APIRouter(tags=["optimization"])
# The status poll on a router of its own, included before all others (api/routers/__init__.py):
# FastAPI matches routes in order, and reaching this one behind the ~50 others cost ~0.2 ms a poll.
hot_router = APIRouter(tags=["optimization"])


async def get_owned_session(db: AsyncSession, session_id: str, user: User) -> OptimizationSession:
    row = await db.get(OptimizationSession, session_id)
    if row is None or (user.role != "admin" and row.owner_id != user.id):
        raise ApiError(404, "not_found", "Session not found")
    return row


def _runtime(request: Request) -> tuple[Any, Any, Any]:
    state = request.app.state
    if not hasattr(state, "runner"):
        raise ApiError(503, "service_unavailable", "The optimization runtime is not running")
    return state.runner, state.executor, state.events


async def _session_signature(
    store: ArtifactStore, model: ModelRecord, raw: list[dict[str, Any]] | None
) -> ProbedSignature | None:
    """The request's input_signature checked against the model (None: the model's own is used).

    A model that has no signature and no evaluation data cannot be benchmarked or evaluated: that is
    known now, so it is refused now (422 naming what to attach), not by a session failing at 0%.
    """
    given = parse_input_signature(raw)
    if given is None:
        if model.input_spec or model.eval_data_path:
            return None
        signature = (model.format_details or {}).get("signature") or {}
        missing = "; ".join(signature.get("missing") or []) or "the model's inputs"
        names = signature.get("input_names")
        raise ApiError(
            422,
            "validation_error",
            f"This model has no known input signature ({missing}) and no evaluation data to benchmark and "
            "evaluate it with",
            "give input_signature in this request (or at upload), e.g. ["
            + ", ".join(
                f'{{"name": "{n}", "shape": [null, ...], "dtype": "float32"}}' for n in names or ["input"]
            )
            + f"], or attach evaluation data with POST /models/{model.id}/evaluation-data",
        )
    report = FormatReport(format=model.format, extension=model.extension, size_bytes=model.size_bytes)
    architecture = ArchitectureRef.model_validate(model.architecture) if model.architecture else None
    try:
        path = await stored_artifact(store, model, model.stored_path)
        probed = await run_isolated(probe_input_spec, path, report, architecture, given)
    except ToolError as exc:
        raise ApiError(422, exc.code, exc.message, exc.details) from exc
    return probed


def _started(executor: Any, session_id: str) -> bool:
    is_started = getattr(executor, "is_started", None)
    return bool(is_started(session_id)) if is_started is not None else executor.is_running(session_id)


@router.post(
    "/optimize",
    response_model=OptimizeResponse,
    summary="Start an optimization session",
    responses=error_responses(401, 404, 422, 429, 503),
)
async def optimize(
    body: OptimizeRequest,
    request: Request,
    user: CurrentUser,
    db: DbDep,
    settings: SettingsDep,
    store: StoreDep,
):
    runner, executor, events = _runtime(request)
    model = await get_owned_model(db, body.model_id, user)
    await check_session_quota(db, user, settings)
    if model.format not in RUNNABLE_FORMATS:
        raise ApiError(
            422,
            "unsupported_format",
            f"Models in the '{model.format}' format cannot be optimized",
            "convert the model to ONNX (tf2onnx for TensorFlow/Keras) and upload that",
        )
    if model.format in ("state_dict", "safetensors") and not model.architecture:
        raise ApiError(
            422, "validation_error", "This weights file has no architecture", "upload it with an architecture"
        )
    probed = await _session_signature(store, model, body.input_signature)
    signature = probed.inputs if probed is not None else None
    criteria = body.criteria()
    outputs = probed.outputs if probed is not None else (model.format_details or {}).get("outputs")
    if outputs is not None:
        from tools.evaluation import check_metric

        try:
            check_metric(
                criteria.metric,
                outputs,
                output=criteria.output,
                targets=(model.eval_data_info or {}).get("targets"),
            )
        except ToolError as exc:
            raise ApiError(422, exc.code, exc.message, exc.details) from exc
    if criteria.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ApiError(
                422, "unsupported_device", "device 'cuda' was requested but this server has no GPU"
            )
    if body.planner == "llm" and not settings.llm_configured:
        raise ApiError(422, "validation_error", "planner 'llm' needs LLM_MODEL configured on the server")
    planner = (
        "llm" if body.planner == "llm" or (body.planner == "auto" and settings.llm_configured) else "rules"
    )
    row = OptimizationSession(
        owner_id=user.id,
        model_id=model.id,
        planner=planner,
        criteria=criteria.resolved(
            default_max_trials=settings.default_max_trials,
            default_time_budget_s=settings.default_time_budget_s,
        ).model_dump(mode="json"),
        criteria_explicit=body.explicit_fields(),
        input_signature=[spec.model_dump() for spec in signature] if signature else None,
    )
    db.add(row)
    await db.commit()
    await db.refresh(row)
    await events.append(row.id, "status", {"status": "queued", "model_id": model.id, "planner": planner})
    executor.submit(row.id)
    return OptimizeResponse(
        session_id=row.id,
        status="queued",
        model_id=model.id,
        planner=planner,
        criteria=row.criteria,
        created_at=row.created_at,
        events_url=f"/sessions/{row.id}/events",
        status_url=f"/sessions/{row.id}/status",
    )


@router.get(
    "/sessions",
    response_model=SessionList,
    summary="List sessions, newest first",
    responses=error_responses(401, 422),
)
async def list_sessions(
    user: CurrentUser,
    db: DbDep,
    status: SessionStatusName | None = Query(default=None, description="Only sessions with this status."),
    limit: int = Query(default=20, ge=1, le=100),
    offset: int = Query(default=0, ge=0, le=MAX_PAGE_OFFSET),
) -> SessionList:
    count_query = select(func.count()).select_from(OptimizationSession)
    query = select(OptimizationSession)
    if user.role != "admin":
        count_query = count_query.where(OptimizationSession.owner_id == user.id)
        query = query.where(OptimizationSession.owner_id == user.id)
    if status is not None:
        count_query = count_query.where(OptimizationSession.status == status)
        query = query.where(OptimizationSession.status == status)
    total = (await db.exec(count_query)).one()
    rows = (
        await db.exec(
            query.order_by(col(OptimizationSession.created_at).desc(), col(OptimizationSession.id).desc())
            .offset(offset)
            .limit(limit)
        )
    ).all()
    return SessionList(
        items=[
            SessionSummary(
                session_id=r.id,
                model_id=r.model_id,
                status=r.status,  # type: ignore[arg-type]
                progress_percentage=r.progress_percentage,
                trials_done=r.trials_done,
                planner=r.planner,
                criteria_name=(r.criteria or {}).get("criteria_name"),
                created_at=r.created_at,
                finished_at=r.finished_at,
            )
            for r in rows
        ],
        total=total,
        limit=limit,
        offset=offset,
    )


# The status poll is the hottest read: one Core query of just these columns (not the ORM row with
# its results snapshot), without aiosqlite's thread hops on SQLite (state/fast_reads.py), and the
# body serialized once by pydantic-core.
_STATUS_QUERY = select(
    OptimizationSession.id,
    OptimizationSession.owner_id,
    OptimizationSession.status,
    OptimizationSession.progress_percentage,
    OptimizationSession.current_step,
    OptimizationSession.trials_done,
    OptimizationSession.criteria,
    OptimizationSession.best,
    OptimizationSession.model_id,
    OptimizationSession.planner,
    OptimizationSession.selected_version,
    OptimizationSession.result_model_id,
    OptimizationSession.error,
    OptimizationSession.cancel_requested,
    OptimizationSession.created_at,
    OptimizationSession.started_at,
    OptimizationSession.finished_at,
    OptimizationSession.updated_at,
).where(OptimizationSession.id == bindparam("session_id"))  # one statement object: compiled once


@hot_router.get(
    "/sessions/{session_id}/status",
    response_model=SessionStatus,
    summary="Session status",
    responses=error_responses(401, 404),
)
async def session_status(session_id: str, request: Request, user: CurrentUser) -> Response:
    row = await request.app.state.fast_reader.first(_STATUS_QUERY, {"session_id": session_id})
    if row is None or (user.role != "admin" and row.owner_id != user.id):
        raise ApiError(404, "not_found", "Session not found")
    body = SessionStatus(
        session_id=row.id,
        status=row.status,
        progress_percentage=row.progress_percentage,
        current_step=row.current_step,
        trials_done=row.trials_done,
        max_trials=(row.criteria or {}).get("max_trials"),
        best_so_far=row.best,
        model_id=row.model_id,
        planner=row.planner,
        selected_version=row.selected_version,
        result_model_id=row.result_model_id,
        error=row.error,
        cancel_requested=row.cancel_requested,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        updated_at=row.updated_at,
    )
    # Returned as bytes: FastAPI would otherwise validate and serialize the model a second time.
    return Response(body.model_dump_json(), media_type="application/json")


@router.post(
    "/sessions/{session_id}/cancel",
    response_model=CancelResponse,
    summary="Cancel a session",
    responses=error_responses(401, 404, 409),
)
async def cancel_session(session_id: str, request: Request, user: CurrentUser, db: DbDep) -> CancelResponse:
    runner, executor, events = _runtime(request)
    row = await get_owned_session(db, session_id, user)
    if row.status in TERMINAL_STATUSES:
        raise ApiError(409, "conflict", f"The session is already {row.status}")
    row.cancel_requested = True
    row.updated_at = utcnow()
    # Queued (never started, or waiting for an executor slot): it ends now, without running anything.
    if row.status == "queued" and not _started(executor, row.id):
        row.status = "cancelled"
        row.finished_at = utcnow()
        row.current_step = "cancelled"
    db.add(row)
    await db.commit()
    await runner.request_cancel(row.id)
    if row.status == "cancelled":
        await events.append(row.id, "status", {"status": "cancelled"})
        await events.append(row.id, "end", {"status": "cancelled"})
        return CancelResponse(session_id=row.id, status="cancelled", message="Cancelled before it started")
    await events.append(row.id, "status", {"status": row.status, "cancel_requested": True})
    return CancelResponse(
        session_id=row.id,
        status=row.status,  # type: ignore[arg-type]
        message="Cancellation requested: the session stops at its next safe point, keeping partial results",
    )


@router.post(
    "/sessions/{session_id}/rollback",
    response_model=RollbackResponse,
    summary="Roll back to the previous accepted version, or to a trial's candidate",
    responses=error_responses(401, 404, 409, 422),
)
async def rollback_session(
    session_id: str, request: Request, user: CurrentUser, db: DbDep, body: RollbackRequest | None = None
) -> RollbackResponse:
    runner, executor, _events = _runtime(request)
    row = await get_owned_session(db, session_id, user)
    if row.status == "queued":
        raise ApiError(409, "conflict", "The session has not started: nothing to roll back")
    body = body or RollbackRequest()
    wanted = body.model_dump(exclude_none=True)
    running = row.status not in TERMINAL_STATUSES  # unfinished: the request waits for the graph's next step
    try:
        out = await runner.rollback(row.id, wanted, running=running)
    except RollbackError as err:
        raise ApiError(422, "rollback_impossible", str(err)) from err
    await db.refresh(row)
    return RollbackResponse(
        session_id=row.id,
        applied=out["applied"],
        target_version=out["target_version"],
        previous_version=out.get("previous_version"),
        status=row.status,  # type: ignore[arg-type]
    )


@router.get(
    "/sessions/{session_id}/results",
    response_model=SessionResults,
    summary="Optimization results",
    responses=error_responses(401, 404, 409),
)
async def session_results(session_id: str, user: CurrentUser, db: DbDep) -> SessionResults:
    row = await get_owned_session(db, session_id, user)
    if not row.results:
        raise ApiError(
            409,
            "not_ready",
            f"No results yet: the session is {row.status}",
            "poll /sessions/{id}/status or follow /sessions/{id}/events",
        )
    r = row.results
    return SessionResults(
        session_id=row.id,
        status=row.status,  # type: ignore[arg-type]
        optimization_summary=r.get("optimization_summary") or {},
        performance_improvements=r.get("performance_improvements"),
        trials=r.get("trials") or [],
        pareto_set=r.get("pareto_set") or [],
        rejected=r.get("rejected") or [],
        selected_version=r.get("selected_version"),
        recipe=r.get("recipe") or [],
        accepted_chain=r.get("accepted_chain") or [],
        baseline=r.get("baseline"),
        selected=r.get("selected"),
        partial=row.status != "completed",
    )


@router.get(
    "/sessions/{session_id}/events",
    summary="Live events (server-sent events)",
    responses={
        **error_responses(401, 404, 429),
        200: {"content": {"text/event-stream": {}}, "description": "The event stream."},
    },
)
async def session_events_stream(
    session_id: str,
    request: Request,
    user: CurrentUser,
    db: DbDep,
    settings: SettingsDep,
    last_event_id: str | None = Header(default=None, alias="Last-Event-ID"),
    after: int | None = Query(
        default=None, ge=0, description="Replay events after this seq (like Last-Event-ID)."
    ),
) -> EventSourceResponse:
    _runner, _executor, events = _runtime(request)
    row = await get_owned_session(db, session_id, user)
    start = after or 0
    if last_event_id:
        try:
            start = max(start, int(last_event_id))
        except ValueError as err:
            raise ApiError(422, "validation_error", "Last-Event-ID must be an integer event id") from err
    connections = request.app.state.sse_connections
    connections.acquire(user.id)  # 429 past USER_MAX_SSE_CONNECTIONS; released when the stream ends
    return EventSourceResponse(
        connections.guard(user.id, session_events(events, request.app.state.sessionmaker, row.id, start)),
        ping=settings.sse_ping_s,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/sessions/{session_id}/messages",
    response_model=MessageList,
    summary="The conversation",
    responses=error_responses(401, 404),
)
async def list_messages(session_id: str, user: CurrentUser, db: DbDep) -> MessageList:
    row = await get_owned_session(db, session_id, user)
    rows = (
        await db.exec(
            select(SessionMessage).where(SessionMessage.session_id == row.id).order_by(SessionMessage.id)
        )
    ).all()
    return MessageList(session_id=row.id, items=[MessageOut.model_validate(m) for m in rows])


@router.post(
    "/sessions/{session_id}/messages",
    response_model=MessageOut,
    status_code=201,
    summary="Tell the agent something (taken into account at its next step)",
    responses=error_responses(401, 404, 409, 422),
)
async def post_message(
    session_id: str, body: MessageIn, request: Request, user: CurrentUser, db: DbDep
) -> MessageOut:
    _runner, _executor, events = _runtime(request)
    row = await get_owned_session(db, session_id, user)
    if row.status in TERMINAL_STATUSES:
        raise ApiError(409, "conflict", f"The session is already {row.status}; start a new one")
    message = SessionMessage(session_id=row.id, role="user", content=body.content)
    db.add(message)
    await db.commit()
    await db.refresh(message)
    await events.append(
        row.id, "message", {"role": "user", "content": body.content, "message_id": message.id}
    )
    return MessageOut.model_validate(message)
