"""The graph's typed state and the records it holds.

The state is checkpointed after every node, so it holds only plain JSON: paths of artifacts,
measurements, trial records, the planner's pending action. Models never enter it; they live in
the artifact store and in the runner's in-memory cache, and any version can be rebuilt exactly by
replaying its recipe (a list of validated tool calls) on the original model.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from pydantic import BaseModel, Field

PlannerSource = Literal["llm", "rules", "rules_fallback"]
TrialStatus = Literal["accepted", "rejected", "failed"]


class ToolCall(BaseModel):
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Action(BaseModel):
    """What the planner decided: apply `calls` to `base_version` (current if None), or finish."""

    kind: Literal["tool", "finish"]
    calls: list[ToolCall] = Field(default_factory=list)
    base_version: str | None = None
    reasoning: str = ""
    source: PlannerSource = "rules"
    strategy: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


class Instructions(BaseModel):
    """Constraints the user gave in chat; every planner's actions are held to them."""

    exclude_prune: list[str] = Field(default_factory=list)
    exclude_quantize: list[str] = Field(default_factory=list)
    banned_techniques: list[str] = Field(default_factory=list)
    prefer_bits: int | None = None
    finish_requested: bool = False
    notes: list[str] = Field(default_factory=list)


class VersionRecord(BaseModel):
    id: str
    parent: str | None = None
    trial: int | None = None
    recipe: list[ToolCall] = Field(default_factory=list)
    artifact_path: str | None = None
    artifact_format: str | None = None
    measurement: dict[str, Any] | None = None
    objective: float | None = None


class TrialRecord(BaseModel):
    number: int
    base_version: str
    calls: list[ToolCall]
    source: PlannerSource
    reasoning: str = ""
    strategy: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    status: TrialStatus
    version_id: str | None = None
    measurement: dict[str, Any] | None = None
    objective: float | None = None
    meets: bool | None = None
    decision: str = ""
    explanation: str = ""
    error: str | None = None
    tool_metrics: dict[str, Any] = Field(default_factory=dict)
    duration_s: float = 0.0
    attempt: int = 1  # the session run that evaluated it (resumed sessions count up)


class GraphState(TypedDict, total=False):
    session_id: str
    criteria: dict[str, Any]  # resolved Criteria
    criteria_explicit: list[str]  # fields the request set itself (the goal may fill the others)
    model: dict[str, Any]  # source: path, architecture, eval_data, name, description
    device: str
    profile: dict[str, Any]
    baseline: dict[str, Any]  # Measurement of the original
    versions: dict[str, dict[str, Any]]  # VersionRecord by id
    current_version: str
    accepted_chain: list[str]  # versions accepted so far, in order; rollback pops from it
    trials: list[dict[str, Any]]  # TrialRecord
    pending: dict[str, Any] | None  # Action chosen by plan, consumed by apply
    candidate: dict[str, Any] | None  # what apply produced, consumed by evaluate
    instructions: dict[str, Any]
    messages_seen: int  # how many of the session's user messages (in order) plan has taken
    rollbacks_applied: list[str]  # request ids of the API's rollback requests applied so far
    started_at: float
    finished: bool
    finish_reason: str
    report: dict[str, Any]


BASELINE_VERSION = "v0"
