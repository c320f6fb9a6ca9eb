"""Request and response bodies of the optimization endpoints."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.criteria import Criteria
from api.schemas.common import PageMeta, UtcDatetime

SessionStatusName = Literal["queued", "running", "completed", "failed", "cancelled"]


_NOT_CRITERIA = {"model_id", "planner", "input_signature"}


class OptimizeRequest(Criteria):
    """The spec's optimization request: a model and the criteria (presets fill what is left out)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model_id": "3f2c0e8a9b7d4c1e8f6a5b4c3d2e1f00",
                    "criteria_name": "balanced_optimization",
                    "target_accuracy_threshold": 0.95,
                    "max_size_reduction_percent": 50.0,
                    "optimization_techniques": ["quantization", "pruning"],
                }
            ]
        },
    )

    model_id: str = Field(min_length=1, max_length=64, description="The model to optimize (yours).")
    planner: Literal["auto", "rules", "llm"] = Field(
        "auto", description="auto: the LLM planner when LLM_MODEL is configured, the rules planner otherwise."
    )
    input_signature: list[dict[str, Any]] | None = Field(
        default=None,
        max_length=64,
        description="Completes or overrides the model's input signature for this session (checked against "
        'its graph): [{"name": "obs", "shape": [null, 64], "dtype": "float32", "low": null, "high": null}]; '
        "null axes are dynamic, low/high bound synthesized values (token ids below the vocabulary).",
    )

    def criteria(self) -> Criteria:
        return Criteria.model_validate(self.model_dump(exclude=_NOT_CRITERIA))

    def explicit_fields(self) -> list[str]:
        return sorted(set(self.model_fields_set) - _NOT_CRITERIA)


class OptimizeResponse(BaseModel):
    session_id: str
    status: SessionStatusName
    model_id: str
    planner: str
    criteria: dict[str, Any]
    created_at: UtcDatetime
    events_url: str
    status_url: str


class BestSoFar(BaseModel):
    version: str | None = None
    size_reduction_percent: float | None = None
    accuracy_retained: float | None = None
    latency_p50_ms: float | None = None
    goal_reached: bool | None = None


class SessionStatus(BaseModel):
    session_id: str
    status: SessionStatusName
    progress_percentage: float
    current_step: str | None
    trials_done: int
    max_trials: int | None
    best_so_far: BestSoFar | None
    model_id: str
    planner: str
    selected_version: str | None
    result_model_id: str | None
    error: str | None
    cancel_requested: bool
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    updated_at: UtcDatetime


class SessionSummary(BaseModel):
    session_id: str
    model_id: str
    status: SessionStatusName
    progress_percentage: float
    trials_done: int
    planner: str
    criteria_name: str | None
    created_at: UtcDatetime
    finished_at: UtcDatetime | None


class SessionList(PageMeta):
    items: list[SessionSummary]


class CancelResponse(BaseModel):
    session_id: str
    status: SessionStatusName
    message: str


class RollbackRequest(BaseModel):
    """Empty: back to the previous accepted version. Or name a trial (its candidate) or a version."""

    model_config = ConfigDict(extra="forbid")

    trial: int | None = Field(None, ge=1, description="Select the candidate this trial produced.")
    version: str | None = Field(None, max_length=32, description="Select this version id (e.g. 'v0', 'v3').")

    @model_validator(mode="after")
    def _one(self) -> RollbackRequest:
        if self.trial is not None and self.version is not None:
            raise ValueError("name either a trial or a version, not both")
        return self


class RollbackResponse(BaseModel):
    session_id: str
    applied: bool = Field(description="False while the session runs: applied at the agent's next step.")
    target_version: str
    previous_version: str | None = None
    status: SessionStatusName


class SessionResults(BaseModel):
    session_id: str
    status: SessionStatusName
    optimization_summary: dict[str, Any]
    performance_improvements: dict[str, Any] | None
    trials: list[dict[str, Any]]
    pareto_set: list[dict[str, Any]] = Field(
        description="The versions no other beats on size, latency and accuracy at once, among those that met "
        "the criteria (the original included)."
    )
    rejected: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Measured versions that missed the criteria (accuracy floor or latency target), with the "
        "gate's reason; never in the Pareto set.",
    )
    selected_version: dict[str, Any] | None
    recipe: list[dict[str, Any]]
    accepted_chain: list[str] = Field(default_factory=list, description="Accepted versions, oldest first.")
    baseline: dict[str, Any] | None = None
    selected: dict[str, Any] | None = None
    partial: bool = Field(description="True while the session has not completed: results so far.")


class MessageIn(BaseModel):
    content: str = Field(min_length=1, max_length=2000, description="What to tell the agent.")


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    role: str
    content: str
    consumed: bool
    created_at: UtcDatetime


class MessageList(BaseModel):
    session_id: str
    items: list[MessageOut]
