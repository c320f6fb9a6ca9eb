"""Runs one optimization session: its graph on the checkpointer, its events, its row, its result model.

`SessionRunner.run(session_id)` is what the executor calls. It starts the graph (or resumes it from
the session's last checkpoint: thread_id = session id), feeds the nodes chat messages, cancel and
rollback requests, keeps the session row's progress and partial results current, and at the end
registers the selected version as a new model derived from the original.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from agents.context import GraphContext
from agents.criteria import Criteria
from agents.critic import Critic
from agents.graph import build_graph, initial_state, rollback_target
from agents.interpreter import GoalInterpreter
from agents.llm import LLMClient
from agents.planners.llm import LLMPlanner
from agents.planners.rules import RulesPlanner
from agents.report import build_report
from agents.state import BASELINE_VERSION
from agents.toolset import method_choices
from agents.workspace import ARTIFACT_INFO, ModelSource, Workspace
from state.artifacts import (
    CHECKSUM_SUFFIX,
    MANIFEST_SUFFIX,
    ArtifactCorruptedError,
    ArtifactStore,
    new_id,
)
from state.digests import DigestError, content_digest, content_size
from state.event_log import EventLog
from state.registry import ModelRecord
from state.runs import LeaseLost
from state.sessions import TERMINAL_STATUSES, OptimizationSession, SessionMessage
from state.settings import Settings
from state.users import utcnow

log = logging.getLogger("robopt.agents")

MODELS_NAMESPACE = "models"  # where the models router keeps model files
# Format -> the download's extension (a transformers directory is sent as a .tar of its files).
DOWNLOADABLE_FORMATS = {"torchscript": ".pt", "onnx": ".onnx", "pt2": ".pt2", "hf_directory": ".tar"}
STORED_DIRECTORY = "model"  # as api.registration stores an uploaded directory
STORED_ONNX_FORM = "onnx"


@dataclass
class SessionControl:
    cancel: bool = False
    rollback_requests: list[dict[str, Any]] = field(default_factory=list)
    seen_requests: set[str] = field(default_factory=set)  # request ids queued once already

    def queue_rollbacks(self, stored: list[dict[str, Any]] | None) -> None:
        """Queue the session row's rollback requests that this control has not queued yet."""
        for request in stored or []:
            rid = request.get("request_id")
            if rid is not None and rid in self.seen_requests:
                continue
            if rid is not None:
                self.seen_requests.add(rid)
            self.rollback_requests.append(dict(request))


class RollbackError(ValueError):
    pass


class SessionRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        store: ArtifactStore,
        events: EventLog,
        checkpointer: Any,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.store = store
        self.events = events
        self.checkpointer = checkpointer
        self.llm = LLMClient.from_settings(settings)
        self.controls: dict[str, SessionControl] = {}
        self._locks: dict[str, asyncio.Lock] = {}  # rollback requests vs. the session's wrap-up
        self._methods: dict[str, list[str]] | None = None

    # -- plumbing ----------------------------------------------------------------------------

    def control(self, session_id: str) -> SessionControl:
        return self.controls.setdefault(session_id, SessionControl())

    def _lock(self, session_id: str) -> asyncio.Lock:
        return self._locks.setdefault(session_id, asyncio.Lock())

    async def emit(
        self, session_id: str, type_: str, payload: dict[str, Any], key: str | None = None
    ) -> None:
        await self.events.append(session_id, type_, payload, dedupe_key=key)

    async def _update(self, session_id: str, **fields: Any) -> OptimizationSession | None:
        async with self.sessionmaker() as db:
            row = await db.get(OptimizationSession, session_id)
            if row is None:
                return None
            for k, v in fields.items():
                setattr(row, k, v)
            row.updated_at = utcnow()
            db.add(row)
            await db.commit()
            await db.refresh(row)
            return row

    def _config(self, session_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": session_id}, "recursion_limit": 1000}

    def _model_files(self, model: ModelRecord) -> tuple[Path, Path | None]:
        """The model's file and evaluation data as verified local paths (blocking: a thread). They come
        from this machine's working tree or from shared storage (ARTIFACT_STORE): the paths in the
        registry are those of the machine that stored them, which need not be this one."""
        path = self.store.resolve(model.stored_path, MODELS_NAMESPACE, model.id)
        eval_data = (
            self.store.resolve(model.eval_data_path, MODELS_NAMESPACE, model.id)
            if model.eval_data_path
            else None
        )
        return path, eval_data

    def _context(
        self, row: OptimizationSession, model: ModelRecord, files: tuple[Path, Path | None] | None = None
    ) -> GraphContext:
        """The graph's context; `files` are the model's local paths (`_model_files`) when it is to be
        loaded, else (a graph opened only for its checkpointed state) the registry's paths."""
        sid = row.id
        criteria = Criteria.model_validate(row.criteria)
        use_llm = self.llm if row.planner == "llm" else None
        planner = LLMPlanner(use_llm, RulesPlanner()) if use_llm is not None else RulesPlanner()
        if self._methods is None:
            self._methods = method_choices()
        control = self.control(sid)

        async def emit(type_: str, payload: dict[str, Any], key: str | None) -> None:
            await self.emit(sid, type_, payload, key)

        async def take_messages() -> list[str]:
            # Every user message so far, in order: the graph takes those after its checkpointed
            # `messages_seen`. They are marked consumed only once a checkpoint holds them (on_progress).
            async with self.sessionmaker() as db:
                rows = (
                    await db.exec(
                        select(SessionMessage)
                        .where(SessionMessage.session_id == sid, SessionMessage.role == "user")
                        .order_by(SessionMessage.id)
                    )
                ).all()
                return [r.content for r in rows]

        async def reply(text: str, index: int) -> None:
            # Keyed by the message's index: a plan re-run after a crash does not answer it twice.
            key = f"chat.reply.{index}"
            if await self.events.has_key(sid, key):
                return
            async with self.sessionmaker() as db:
                db.add(SessionMessage(session_id=sid, role="assistant", content=text, consumed=True))
                await db.commit()
            await self.emit(sid, "message", {"role": "assistant", "content": text}, key)

        async def on_progress(state: dict[str, Any]) -> None:
            """Bring the row up to a checkpointed state (called by the node after the one that made it)."""
            from agents.graph import _progress

            progress = _progress(state, "")
            done = progress["trials_done"]
            step = f"trial {done + 1}: applying" if state.get("pending") else f"trial {done} evaluated"
            await self._update(
                sid,
                progress_percentage=progress["percentage"],
                trials_done=done,
                best=progress["best"],
                current_step=step,
                selected_version=state.get("current_version"),
                results=build_report(state),
            )
            await self._acknowledge(sid, state)

        if files is None:
            files = Path(model.stored_path), Path(model.eval_data_path) if model.eval_data_path else None
        source = ModelSource(
            path=files[0],
            architecture=model.architecture,
            eval_data=files[1],
            inputs=row.input_signature or model.input_spec,
            name=model.name,
            description=model.description or "",
        )
        workspace = Workspace(
            source=source,
            artifacts_dir=self.store.root / sid,
            device=criteria.resolved_device(),
            on_saved=lambda vid, folder: publish_version(self.store, sid, vid, folder),
        )
        return GraphContext(
            workspace=workspace,
            planner=planner,
            fallback_planner=RulesPlanner(),
            critic=Critic(use_llm),
            interpreter=GoalInterpreter(use_llm),
            emit=emit,
            take_messages=take_messages,
            reply=reply,
            on_progress=on_progress,
            cancelled=lambda: control.cancel,
            rollback_requests=control.rollback_requests,
            method_choices=self._methods,
        )

    async def _acknowledge(self, session_id: str, state: dict[str, Any]) -> None:
        """Mark what a checkpointed state has taken: its first `messages_seen` user messages become
        consumed, and the rollback requests it applied leave the session row."""
        seen = int(state.get("messages_seen", 0))
        applied = set(state.get("rollbacks_applied") or [])
        async with self.sessionmaker() as db:
            if seen:
                rows = (
                    await db.exec(
                        select(SessionMessage)
                        .where(SessionMessage.session_id == session_id, SessionMessage.role == "user")
                        .order_by(SessionMessage.id)
                        .limit(seen)
                    )
                ).all()
                for r in rows:
                    if not r.consumed:
                        r.consumed = True
                        db.add(r)
            if applied:
                row = await db.get(OptimizationSession, session_id)
                if row is not None and row.pending_rollbacks:
                    left = [r for r in row.pending_rollbacks if r.get("request_id") not in applied]
                    if len(left) != len(row.pending_rollbacks):
                        row.pending_rollbacks = left
                        db.add(row)
            await db.commit()

    async def _load(self, session_id: str) -> tuple[OptimizationSession, ModelRecord | None] | None:
        async with self.sessionmaker() as db:
            row = await db.get(OptimizationSession, session_id)
            if row is None:
                return None
            model = await db.get(ModelRecord, row.model_id)
            return row, model

    async def _imported_model_changed(self, model: ModelRecord) -> str | None:
        """Why an imported model (files outside the store) cannot be used: they changed since import."""
        if not (model.format_details or {}).get("imported"):
            return None
        try:
            digest = await asyncio.to_thread(content_digest, Path(model.stored_path))
        except (OSError, DigestError) as exc:
            return f"the imported model's files at {model.stored_path} can no longer be read: {exc}"
        if digest != model.sha256:
            return (
                f"the imported model's files at {model.stored_path} changed since they were imported "
                f"(sha256 {model.sha256[:12]}... recorded, {digest[:12]}... now); import them again"
            )
        return None

    # -- running -----------------------------------------------------------------------------

    async def refresh_control(self, session_id: str) -> None:
        """Take cancel and rollback requests from the session row (the API may be another process)."""
        async with self.sessionmaker() as db:
            row = await db.get(OptimizationSession, session_id)
        if row is None:
            return
        control = self.control(session_id)
        control.cancel = control.cancel or row.cancel_requested
        control.queue_rollbacks(row.pending_rollbacks)

    async def run(self, session_id: str, attempt: int | None = None) -> None:
        """Run (or resume) the session; `attempt` is the run table's number for this run (else the
        row's count + 1). A LeaseLost from any write ends it at once, writing nothing more."""
        loaded = await self._load(session_id)
        if loaded is None:
            return
        row, model = loaded
        if row.status in TERMINAL_STATUSES:
            self.controls.pop(session_id, None)
            return
        control = self.control(session_id)
        control.cancel = control.cancel or row.cancel_requested
        # Rollbacks asked for before a crash (or while this session waited) are in the row.
        control.queue_rollbacks(row.pending_rollbacks)
        if model is None:
            await self._fail(session_id, "the model of this session no longer exists")
            return
        changed = await self._imported_model_changed(model)
        if changed is not None:
            await self._fail(session_id, changed)
            return
        try:
            files = await asyncio.to_thread(self._model_files, model)
        except (ArtifactCorruptedError, FileNotFoundError) as err:
            await self._fail(session_id, f"the model's stored files cannot be used: {err}")
            return
        ctx = self._context(row, model, files)
        graph = build_graph(ctx, checkpointer=self.checkpointer)
        config = self._config(session_id)
        snapshot = await graph.aget_state(config)
        resuming = bool(snapshot.values)
        if control.cancel and not resuming:
            await self._cancel_unstarted(session_id)
            return
        attempt = attempt if attempt is not None else row.attempts + 1
        ctx.attempt = attempt
        async with self.sessionmaker() as db:
            fresh = await db.get(OptimizationSession, session_id)
            if fresh is None or fresh.status in TERMINAL_STATUSES:  # cancelled while it was loading
                self.controls.pop(session_id, None)
                return
            fresh.status = "running"
            fresh.attempts = attempt
            fresh.started_at = fresh.started_at or utcnow()
            fresh.current_step = "resuming" if resuming else "starting"
            fresh.updated_at = utcnow()
            db.add(fresh)
            await db.commit()
        await self.emit(
            session_id,
            "status",
            {"status": "running", "attempt": attempt, "resumed": resuming, "next": list(snapshot.next or ())},
            f"status.running.{attempt}",
        )
        try:
            if resuming and not snapshot.next:
                final = snapshot.values  # the graph finished; only the wrap-up was missing
            else:
                if resuming:
                    inputs: Any = None
                else:
                    criteria = Criteria.model_validate(row.criteria)
                    inputs = initial_state(
                        session_id,
                        criteria,
                        set(row.criteria_explicit),
                        {
                            "name": model.name,
                            "description": model.description or "",
                            "model_id": model.id,
                            "runtime": "onnx" if model.format == "onnx" else "torch",
                        },
                        criteria.resolved_device(),
                    )
                final = await graph.ainvoke(inputs, config, durability="sync")
        except asyncio.CancelledError:
            log.info("session %s interrupted; it resumes from its checkpoint at the next start", session_id)
            raise
        except LeaseLost:
            log.warning("session %s: attempt %d lost its lease; another worker has it", session_id, attempt)
            raise
        except Exception as err:
            log.exception("session %s failed", session_id)
            state = (await graph.aget_state(config)).values
            await self._fail(session_id, f"{type(err).__name__}: {err}", state)
            return
        await self._finish(session_id, final)

    async def _cancel_unstarted(self, session_id: str) -> None:
        """Cancelled while it waited for a slot: nothing ran, nothing to keep."""
        await self._update(session_id, status="cancelled", current_step="cancelled", finished_at=utcnow())
        await self.emit(session_id, "status", {"status": "cancelled", "started": False}, "status.cancelled")
        await self.emit(session_id, "end", {"status": "cancelled"}, "end")
        self.controls.pop(session_id, None)

    async def _fail(self, session_id: str, message: str, state: dict[str, Any] | None = None) -> None:
        results = build_report(state) if state and state.get("criteria") else None
        if results is not None and state and state.get("versions"):
            # Partial results: the best accepted version so far is still registered and downloadable.
            try:
                results = await self._publish_selected(session_id, state, results)
            except Exception:  # noqa: BLE001 - the failure itself must still be recorded
                log.exception("session %s: could not register its best version", session_id)
        await self._update(
            session_id,
            status="failed",
            error=message[:4000],
            finished_at=utcnow(),
            results=results,
            selected_version=state.get("current_version") if state else None,
            current_step="failed",
        )
        await self.emit(session_id, "error", {"stage": "session", "message": message[:2000], "fatal": True})
        await self.emit(session_id, "status", {"status": "failed"})
        await self.emit(session_id, "end", {"status": "failed"})
        self.controls.pop(session_id, None)

    async def _finish(self, session_id: str, state: dict[str, Any]) -> None:
        status = "cancelled" if state.get("finish_reason") == "cancelled" else "completed"
        async with self._lock(session_id):
            # Rollbacks that arrived after the last step the graph took still apply to the result.
            state = await self._apply_pending_rollbacks(session_id, state)
            report = state.get("report") or build_report(state)
            report = await self._publish_selected(session_id, state, report)
            await self._update(
                session_id,
                status=status,
                progress_percentage=100.0 if status == "completed" else _pct(state),
                current_step=status,
                finished_at=utcnow(),
                results=report,
                selected_version=state.get("current_version"),
                trials_done=len(state.get("trials", [])),
            )
            await self._acknowledge(session_id, state)
        await self.emit(
            session_id,
            "result",
            {
                "optimization_summary": report["optimization_summary"],
                "performance_improvements": report.get("performance_improvements"),
                "selected_version": report.get("selected_version"),
            },
            "result",
        )
        await self.emit(session_id, "status", {"status": status}, f"status.{status}")
        await self.emit(session_id, "end", {"status": status}, "end")
        self.controls.pop(session_id, None)

    async def _publish_selected(
        self, session_id: str, state: dict[str, Any], report: dict[str, Any]
    ) -> dict[str, Any]:
        """Register the selected version as a model derived from the original (once per version)."""
        vid = state.get("current_version") or BASELINE_VERSION
        selected = dict(report.get("selected_version") or {})
        async with self.sessionmaker() as db:
            row = await db.get(OptimizationSession, session_id)
            assert row is not None
            original = await db.get(ModelRecord, row.model_id)
            registered = dict(row.registered_versions or {})
            model_id: str | None
            if vid == BASELINE_VERSION:
                model_id = row.model_id
            elif vid in registered and await db.get(ModelRecord, registered[vid]) is not None:
                model_id = registered[vid]
            else:
                version = state["versions"][vid]
                path, fmt = version.get("artifact_path"), version.get("artifact_format")
                # From this machine's tree or from shared storage (wherever the session ran).
                artifact = await asyncio.to_thread(_version_info, self.store, session_id, vid, path)
                local = None
                if original is not None and fmt in DOWNLOADABLE_FORMATS:
                    local = await asyncio.to_thread(
                        _version_files, self.store, session_id, vid, path, artifact
                    )
                model_id = None
                if original is not None and local is not None:
                    model_id = new_id()
                    ext = DOWNLOADABLE_FORMATS[fmt]
                    stored, details = await asyncio.to_thread(
                        _store_version, self.store, local[0], fmt, model_id, artifact, local[1]
                    )
                    eval_path = None
                    if original.eval_data_path:
                        eval_path = await asyncio.to_thread(_copy_eval_data, self.store, original, model_id)
                    digest = await asyncio.to_thread(content_digest, stored)
                    record = ModelRecord(
                        id=model_id,
                        owner_id=original.owner_id if row.owner_id is None else row.owner_id,
                        name=f"{original.name} (optimized, session {session_id[:8]}, {vid})"[:200],
                        description=(
                            f"Optimized by session {session_id}: "
                            + "; ".join(
                                f"{c['tool']}({c.get('arguments', {})})" for c in version.get("recipe", [])
                            )
                            + (f". Note: {artifact['note']}" if artifact.get("note") else "")
                        )[:1800],
                        format=fmt,
                        extension=ext,
                        original_filename=f"{original.name}-{vid}{ext}"[:255],
                        size_bytes=await asyncio.to_thread(content_size, stored),
                        sha256=digest,
                        stored_path=str(stored.resolve()),
                        input_spec=original.input_spec,
                        format_details=details,
                        eval_data_path=eval_path,
                        eval_data_info=original.eval_data_info if eval_path else None,
                        parent_model_id=original.id,
                        source_session_id=session_id,
                    )
                    db.add(record)
                    registered[vid] = model_id
                    row.registered_versions = registered
                    db.add(row)
            row.result_model_id = model_id
            db.add(row)
            await db.commit()
        selected["model_id"] = model_id
        selected["download_url"] = f"/models/{model_id}/download" if model_id else None
        if vid != BASELINE_VERSION:
            path = state["versions"][vid].get("artifact_path")
            artifact = await asyncio.to_thread(_version_info, self.store, session_id, vid, path)
            # The download is in the uploaded format unless a technique needed another runtime: say which.
            selected["source_format"] = artifact.get("source_format") or (
                original.format if original else None
            )
            selected["artifact_converted"] = bool(artifact.get("converted"))
            if artifact.get("runtime"):
                selected["artifact_runtime"] = artifact["runtime"]
            if model_id and artifact.get("onnx"):
                selected["onnx_download_url"] = f"/models/{model_id}/download?format=onnx"
            if artifact.get("note"):
                selected["artifact_note"] = artifact["note"]
        if model_id is None:
            selected["note"] = (
                "this version could not be saved in a downloadable format (the uploaded one, TorchScript, "
                ".pt2 or ONNX); rebuild it from the recipe"
            )
        return {**report, "selected_version": selected}

    async def _apply_pending_rollbacks(self, session_id: str, state: dict[str, Any]) -> dict[str, Any]:
        """Apply the row's rollback requests that `state` has not applied; the new state is checkpointed."""
        async with self.sessionmaker() as db:
            row = await db.get(OptimizationSession, session_id)
            pending = list(row.pending_rollbacks or []) if row is not None else []
        applied = list(state.get("rollbacks_applied") or [])
        todo = [r for r in pending if r.get("request_id") not in applied]
        if not todo or not state.get("versions"):
            return state
        for request in todo:
            rid = request.get("request_id")
            wanted = {k: v for k, v in request.items() if k != "request_id"}
            applied.append(rid)
            previous = state.get("current_version")
            try:
                target, chain = rollback_target(state, wanted)  # type: ignore[arg-type]
            except ValueError as err:
                await self.emit(
                    session_id, "error", {"stage": "rollback", "message": str(err)}, f"rollback.{rid}"
                )
                continue
            state = {**state, "current_version": target, "accepted_chain": chain}
            await self.emit(
                session_id,
                "rollback",
                {
                    "automatic": False,
                    "from_version": previous,
                    "current_version": target,
                    "requested": wanted,
                },
                f"rollback.{rid}",
            )
        report = build_report(state)
        state = {**state, "rollbacks_applied": applied, "report": report}
        loaded = await self._load(session_id)
        if loaded is not None and loaded[1] is not None:
            graph = build_graph(self._context(loaded[0], loaded[1]), checkpointer=self.checkpointer)
            await graph.aupdate_state(
                self._config(session_id),
                {
                    "current_version": state["current_version"],
                    "accepted_chain": state["accepted_chain"],
                    "rollbacks_applied": applied,
                    "report": report,
                },
                as_node="report",
            )
        return state

    async def abandon(self, session_id: str, reason: str) -> None:
        """The executor gave up on the session (its workers kept dying): fail it, keeping partial results."""
        loaded = await self._load(session_id)
        if loaded is None or loaded[0].status in TERMINAL_STATUSES:
            return
        row, model = loaded
        state: dict[str, Any] | None = None
        if model is not None:
            graph = build_graph(self._context(row, model), checkpointer=self.checkpointer)
            state = dict((await graph.aget_state(self._config(session_id))).values or {})
        await self._fail(session_id, f"the session could not be run: {reason}", state)

    # -- control from the API ----------------------------------------------------------------

    async def request_cancel(self, session_id: str) -> None:
        self.control(session_id).cancel = True

    async def rollback(self, session_id: str, request: dict[str, Any], *, running: bool) -> dict[str, Any]:
        """Move the selected version back (running: at the next planning step). Raises RollbackError.

        A request for a session that has not finished is stored in the session row (it survives a
        crash) and applied by the graph at its next step, or at the wrap-up if the graph ends first.
        """
        async with self._lock(session_id):
            return await self._rollback(session_id, request)

    async def _rollback(self, session_id: str, request: dict[str, Any]) -> dict[str, Any]:
        loaded = await self._load(session_id)
        if loaded is None or loaded[1] is None:
            raise RollbackError("the session or its model no longer exists")
        row, model = loaded
        graph = build_graph(self._context(row, model), checkpointer=self.checkpointer)
        config = self._config(session_id)
        snapshot = await graph.aget_state(config)
        state = dict(snapshot.values or {})
        if not state.get("versions"):
            raise RollbackError("the session has no measured versions yet")
        try:
            target, chain = rollback_target(state, request)  # type: ignore[arg-type]
        except ValueError as err:
            raise RollbackError(str(err)) from err
        if row.status not in TERMINAL_STATUSES:
            stored = {**request, "request_id": new_id()}
            async with self.sessionmaker() as db:
                fresh = await db.get(OptimizationSession, session_id)
                assert fresh is not None
                fresh.pending_rollbacks = [*(fresh.pending_rollbacks or []), stored]
                db.add(fresh)
                await db.commit()
            self.control(session_id).queue_rollbacks([stored])
            await self.emit(
                session_id,
                "rollback",
                {"automatic": False, "pending": True, "requested": request, "target_version": target},
            )
            return {"applied": False, "pending": True, "target_version": target}
        previous = state.get("current_version")
        new_state = {**state, "current_version": target, "accepted_chain": chain}
        report = build_report(new_state)
        await graph.aupdate_state(
            config, {"current_version": target, "accepted_chain": chain, "report": report}, as_node="report"
        )
        report = await self._publish_selected(session_id, new_state, report)
        await self._update(session_id, results=report, selected_version=target)
        await self.emit(
            session_id,
            "rollback",
            {"automatic": False, "from_version": previous, "current_version": target, "requested": request},
        )
        await self.emit(
            session_id,
            "result",
            {
                "optimization_summary": report["optimization_summary"],
                "performance_improvements": report.get("performance_improvements"),
                "selected_version": report.get("selected_version"),
            },
        )
        await self.emit(session_id, "end", {"status": row.status})
        return {"applied": True, "pending": False, "target_version": target, "previous_version": previous}


def _pct(state: dict[str, Any]) -> float:
    criteria = Criteria.model_validate(state["criteria"]) if state.get("criteria") else None
    total = (criteria.max_trials if criteria else None) or 12
    return round(min(95.0, 10.0 + 85.0 * len(state.get("trials", [])) / total), 1)


def publish_version(store: ArtifactStore, session_id: str, version_id: str, directory: Path) -> None:
    """Record and publish a version's folder as Workspace.save left it (`<session>/<version>/`): each
    file and each folder (a transformers directory, its ONNX form), artifact.json last."""
    entries = sorted(
        (e for e in directory.iterdir() if not e.name.startswith(".tmp-")),
        key=lambda e: (e.name == ARTIFACT_INFO, e.name),
    )
    for entry in entries:
        if entry.name.endswith((CHECKSUM_SUFFIX, MANIFEST_SUFFIX)):
            continue
        if entry.is_dir():
            store.publish_tree(entry, session_id, version_id, entry.name)
        elif entry.is_file():
            store.publish(entry, session_id, version_id, entry.name)


def _version_info(store: ArtifactStore, session_id: str, version_id: str, path: str | None) -> dict[str, Any]:
    """The `artifact.json` Workspace.save wrote beside a version's file, wherever the session ran
    (empty when it is nowhere or unreadable)."""
    if not path:
        return {}
    try:
        info = store.resolve(Path(path).parent / ARTIFACT_INFO, session_id, version_id)
        return dict(json.loads(info.read_text()))
    except (OSError, ValueError, ArtifactCorruptedError) as err:
        log.warning("session %s: version %s: no artifact.json: %s", session_id, version_id, err)
        return {}


def _version_files(
    store: ArtifactStore, session_id: str, version_id: str, path: str | None, info: dict[str, Any]
) -> tuple[Path, Path | None] | None:
    """A version's download as a verified local path and its ONNX form's folder (transformers
    directories), wherever the session ran (the session may have been resumed on another machine, a
    rollback of a finished one runs in the API); None when it is nowhere or corrupted."""
    if not path:
        return None
    recorded = Path(path)
    onnx = info.get("onnx")
    try:
        local = store.resolve(recorded, session_id, version_id)
        onnx_dir = (
            store.resolve(recorded.parent / Path(onnx["path"]).parent, session_id, version_id)
            if onnx
            else None
        )
    except FileNotFoundError as err:
        log.warning("session %s: version %s has no stored files: %s", session_id, version_id, err)
        return None
    except ArtifactCorruptedError as err:
        log.error("session %s: version %s: %s", session_id, version_id, err)
        return None
    return local, onnx_dir


def _store_version(
    store: ArtifactStore,
    path: Path,
    fmt: str,
    model_id: str,
    artifact: dict[str, Any],
    onnx_dir: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Copy a version's download (a file, or a transformers directory and its ONNX form) into the
    model store; the record's format_details say which runtime each form needs."""
    directory = store.directory(MODELS_NAMESPACE, model_id)
    details: dict[str, Any] = {"runtime": artifact.get("runtime")}
    if fmt == "hf_directory":
        stored = directory / STORED_DIRECTORY
        shutil.copytree(path, stored)
        store.publish_tree(stored, MODELS_NAMESPACE, model_id, STORED_DIRECTORY)
        details["downloads"] = {"hf_directory": dict((artifact.get("downloads") or {}).get(fmt) or {})}
        details["downloads"]["hf_directory"].pop("path", None)
        onnx = artifact.get("onnx")
        if onnx:
            shutil.copytree(onnx_dir or path.parent / Path(onnx["path"]).parent, directory / STORED_ONNX_FORM)
            store.publish_tree(directory / STORED_ONNX_FORM, MODELS_NAMESPACE, model_id, STORED_ONNX_FORM)
            graph = directory / STORED_ONNX_FORM / Path(onnx["path"]).name
            details["downloads"]["onnx"] = {
                "path": f"{STORED_ONNX_FORM}/{graph.name}",
                "runtime": onnx.get("runtime"),
                "external_data": bool(onnx.get("external_data")),
                "sha256": content_digest(graph.parent if onnx.get("external_data") else graph),
            }
        elif artifact.get("onnx_unavailable"):
            details["onnx_unavailable"] = artifact["onnx_unavailable"]
        return stored, details
    stored = store.put_file(path, MODELS_NAMESPACE, model_id, f"model{DOWNLOADABLE_FORMATS[fmt]}")
    return stored, details


def _copy_eval_data(store: ArtifactStore, original: ModelRecord, model_id: str) -> str | None:
    """The original's evaluation data stored again for the derived model (None: it has none left)."""
    assert original.eval_data_path is not None
    try:
        source = store.resolve(original.eval_data_path, MODELS_NAMESPACE, original.id)
    except FileNotFoundError:
        return None
    stored = store.put(source, MODELS_NAMESPACE, model_id, f"eval_data{source.suffix}")
    return str(stored.path.resolve())
