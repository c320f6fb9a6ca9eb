"""The eval cases: a reference model, the task that scores it in closed loop, and the stated criteria.

Criteria per case are what a robotics user would ask of that model:
- policies on a CPU control loop: shrink and speed up, keep 99% of the action accuracy (balanced);
- vla-mini: balanced, keep 97% of the action-token accuracy;
- digits-cnn: accuracy first (keep 99%).
`max_trials` bounds the agent so that it can use at most a quarter of the oracle's grid.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class EvalCase(BaseModel):
    case: str
    reference: str
    task: str
    criteria: dict[str, Any]
    suites: list[str] = Field(default_factory=lambda: ["tiny", "smoke", "full"])


CPU_CASES: list[EvalCase] = [
    EvalCase(
        case="reacher-mlp",
        reference="reacher-mlp",
        task="reacher",
        criteria={
            "criteria_name": "balanced_optimization",
            "target_accuracy_threshold": 0.99,
            "optimization_techniques": ["quantization", "pruning"],
            "device": "cpu",
            "max_trials": 8,
        },
    ),
    EvalCase(
        case="pendulum-mlp",
        reference="pendulum-mlp",
        task="pendulum",
        criteria={
            "criteria_name": "balanced_optimization",
            "target_accuracy_threshold": 0.99,
            "optimization_techniques": ["quantization", "pruning"],
            "device": "cpu",
            "max_trials": 8,
        },
        suites=["smoke", "full"],
    ),
    EvalCase(
        case="vla-mini",
        reference="vla-mini",
        task="gantry",
        criteria={
            "criteria_name": "balanced_optimization",
            "target_accuracy_threshold": 0.97,
            "optimization_techniques": ["quantization", "pruning"],
            "device": "cpu",
            "max_trials": 8,
        },
        suites=["smoke", "full"],
    ),
    EvalCase(
        case="digits-cnn",
        reference="digits-cnn",
        task="digits",
        criteria={
            "criteria_name": "accuracy_first",
            "target_accuracy_threshold": 0.99,
            "optimization_techniques": ["quantization", "pruning"],
            "device": "cpu",
            "max_trials": 8,
        },
    ),
]

SUITES = ("tiny", "smoke", "full", "gpu")


def cases_for(suite: str, only: list[str] | None = None) -> list[EvalCase]:
    cases = [c for c in CPU_CASES if suite in c.suites]
    if only:
        unknown = set(only) - {c.case for c in CPU_CASES}
        if unknown:
            raise ValueError(f"unknown case(s) {sorted(unknown)}; known: {[c.case for c in CPU_CASES]}")
        cases = [c for c in CPU_CASES if c.case in only]
    return cases
