"""Run the optimization graph in-process on a loaded model (the eval harness's entry point).

Same graph, planners, gate and report as a session behind the API, with an in-memory checkpointer
and no database: events go to `on_event` if given.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langgraph.checkpoint.memory import InMemorySaver

from agents import compute
from agents.context import GraphContext
from agents.criteria import Criteria, Measurement
from agents.critic import Critic
from agents.graph import build_graph, initial_state
from agents.interpreter import GoalInterpreter
from agents.llm import LLMClient
from agents.planners.base import Planner
from agents.planners.llm import LLMPlanner
from agents.planners.rules import RulesPlanner
from agents.state import ToolCall, TrialRecord, VersionRecord
from agents.toolset import method_choices
from agents.workspace import Workspace

EventCallback = Callable[[str, dict[str, Any]], None]


@dataclass
class LocalOutcome:
    selected: Any  # ModelHandle of the selected version
    baseline: Measurement
    selected_measurement: Measurement
    selected_version: str
    trials: list[TrialRecord]
    pareto: list[dict[str, Any]]
    recipe: list[ToolCall]
    report: dict[str, Any]
    criteria: Criteria
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def num_trials(self) -> int:
        return len(self.trials)


def make_planner(planner: str | Planner, llm: LLMClient | None) -> Planner:
    if not isinstance(planner, str):
        return planner
    if planner == "rules":
        return RulesPlanner()
    if planner == "llm":
        if llm is None:
            raise ValueError("planner='llm' needs LLM_MODEL (and LLM_API_BASE) configured")
        return LLMPlanner(llm, RulesPlanner())
    raise ValueError(f"unknown planner {planner!r}; use 'rules', 'llm' or a Planner")


async def optimize_local_async(
    handle: Any,
    criteria: Criteria | dict[str, Any],
    *,
    planner: str | Planner = "rules",
    on_event: EventCallback | None = None,
    llm: LLMClient | None = None,
    artifacts_dir: Path | None = None,
    messages: list[str] | None = None,
) -> LocalOutcome:
    crit = criteria if isinstance(criteria, Criteria) else Criteria.model_validate(criteria)
    explicit = set(crit.model_fields_set)
    if llm is None and planner == "llm":
        from state.settings import get_settings

        llm = LLMClient.from_settings(get_settings())
    resolved = crit.resolved()
    device = resolved.resolved_device()
    events: list[tuple[str, dict[str, Any]]] = []
    pending_messages = list(messages or [])

    async def emit(type_: str, payload: dict[str, Any], key: str | None) -> None:
        events.append((type_, payload))
        if on_event is not None:
            on_event(type_, payload)

    async def take_messages() -> list[str]:
        return list(pending_messages)  # every message so far; the graph skips those it has seen

    async def reply(text: str, index: int) -> None:
        await emit("message", {"role": "assistant", "content": text}, f"chat.reply.{index}")

    chosen = make_planner(planner, llm)
    use_llm = llm if isinstance(planner, str) and planner == "llm" else None
    ctx = GraphContext(
        workspace=Workspace(original=handle, artifacts_dir=artifacts_dir, device=device),
        planner=chosen,
        fallback_planner=RulesPlanner(),
        critic=Critic(use_llm),
        interpreter=GoalInterpreter(use_llm),
        emit=emit,
        take_messages=take_messages,
        reply=reply,
        method_choices=method_choices(),
    )
    graph = build_graph(ctx, checkpointer=InMemorySaver())
    run_id = uuid.uuid4().hex
    state = initial_state(
        run_id,
        resolved,
        explicit,
        {"name": str(handle.metadata.get("name", "")), "description": "", "runtime": handle.runtime},
        device,
    )
    final = await graph.ainvoke(
        state, {"configurable": {"thread_id": run_id}, "recursion_limit": 1000}, durability="sync"
    )
    report = final["report"]
    selected_id = final["current_version"]
    version = final["versions"][selected_id]
    selected_handle = await compute.run(ctx.workspace.handle, VersionRecord.model_validate(version))
    await emit("result", {"summary": report["optimization_summary"]}, None)
    return LocalOutcome(
        selected=selected_handle,
        baseline=Measurement.model_validate(final["baseline"]),
        selected_measurement=Measurement.model_validate(version["measurement"]),
        selected_version=selected_id,
        trials=[TrialRecord.model_validate(t) for t in final.get("trials", [])],
        pareto=report["pareto_set"],
        recipe=[ToolCall.model_validate(c) for c in version.get("recipe", [])],
        report=report,
        criteria=Criteria.model_validate(final["criteria"]),
        events=events,
    )


def optimize_local(
    handle: Any,
    criteria: Criteria | dict[str, Any],
    *,
    planner: str | Planner = "rules",
    on_event: EventCallback | None = None,
    llm: LLMClient | None = None,
    artifacts_dir: Path | None = None,
    messages: list[str] | None = None,
) -> LocalOutcome:
    """Blocking wrapper of `optimize_local_async` (from code that is not already in an event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        # The loop is ours alone: compute runs inline on this thread (see agents/compute.py).
        token = compute.inline.set(True)
        try:
            return asyncio.run(
                optimize_local_async(
                    handle,
                    criteria,
                    planner=planner,
                    on_event=on_event,
                    llm=llm,
                    artifacts_dir=artifacts_dir,
                    messages=messages,
                )
            )
        finally:
            compute.inline.reset(token)
    raise RuntimeError("optimize_local was called inside an event loop; await optimize_local_async instead")
