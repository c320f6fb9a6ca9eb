"""The planner interface: given what the session knows, the next action (tool calls or finish)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agents.criteria import Criteria, Measurement
from agents.state import Action, Instructions, ToolCall, TrialRecord, VersionRecord

# The transforms a planner may call, by technique; distill is recovery, not compression, and goes with
# either. Measuring (benchmark, evaluate) is not the planner's job: every candidate is measured by the graph.
TRANSFORM_TOOLS = ("quantize", "prune", "distill")
# The deploy runtime (static KV cache, compiled steps): lossless, offered when `compilation` is allowed.
COMPILE_TOOL = "compile_model"
HALF_PRECISION_METHODS = ("fp16", "bf16")


@dataclass
class PlannerView:
    """Everything a planner may look at. Built fresh from the graph state at every step."""

    criteria: Criteria
    device: str
    profile: dict[str, Any]
    baseline: Measurement
    current_version: str
    current: Measurement
    versions: dict[str, VersionRecord]
    trials: list[TrialRecord]
    instructions: Instructions
    trials_left: int
    new_messages: list[str] = field(default_factory=list)
    model_name: str = ""
    model_description: str = ""
    runtime: str = "torch"
    method_choices: dict[str, list[str]] = field(default_factory=dict)  # tool -> methods it offers
    elapsed_s: float = 0.0  # wall-clock seconds since the session started (the time budget's clock)

    @property
    def current_record(self) -> VersionRecord:
        return self.versions[self.current_version]

    def allowed_techniques(self) -> set[str]:
        return set(self.criteria.optimization_techniques) - set(self.instructions.banned_techniques)


@runtime_checkable
class Planner(Protocol):
    name: str

    async def next_action(self, view: PlannerView) -> Action: ...


def check_allowed(call: ToolCall, view: PlannerView) -> str | None:
    """Why a (schema-valid) call breaks the user's criteria or chat constraints; None if it doesn't."""
    allowed = view.allowed_techniques()
    if call.tool == COMPILE_TOOL:
        if "compilation" not in allowed:
            return "compilation (compile_model) is not allowed for this session (criteria or instructions)"
        return None
    if call.tool not in TRANSFORM_TOOLS:
        return f"'{call.tool}' is not an optimization step; allowed tools: quantize, prune, distill, finish"
    if call.tool == "prune" and "pruning" not in allowed:
        return "pruning is not allowed for this session (criteria or the user's instructions)"
    if call.tool == "quantize":
        method = str(call.arguments.get("method", ""))
        if "quantization" not in allowed:
            if not ("half_precision" in allowed and method in HALF_PRECISION_METHODS):
                return "quantization is not allowed for this session (criteria or the user's instructions)"
    return None


def enforce_instructions(call: ToolCall, ins: Instructions) -> ToolCall:
    """The call with the user's exclude patterns merged into its `exclude` argument."""
    extra = (
        ins.exclude_prune if call.tool == "prune" else ins.exclude_quantize if call.tool == "quantize" else []
    )
    if not extra:
        return call
    args = dict(call.arguments)
    current = list(args.get("exclude") or [])
    args["exclude"] = current + [p for p in extra if p not in current]
    return ToolCall(tool=call.tool, arguments=args)
