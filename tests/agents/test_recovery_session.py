"""Recovery in a whole session: a candidate that misses the floor is distilled and measured again, the
trial records what that cost and gained, the recipe replays exactly, and the Pareto set only holds
candidates that met the criteria."""

from __future__ import annotations

import torch

from agents.criteria import Criteria, Measurement
from agents.local import optimize_local_async
from agents.planners.base import PlannerView
from agents.planners.rules import RulesPlanner
from agents.report import build_report
from agents.state import Action, ToolCall
from agents.workspace import run_call
from tests.tools.policies import trained_policy


class PlainPruneFirst:
    """Prunes half the hidden neurons without recovery (as an LLM might), then lets the rules decide."""

    name = "scripted"

    def __init__(self) -> None:
        self.rules = RulesPlanner()

    async def next_action(self, view: PlannerView) -> Action:
        if not view.trials:
            call = ToolCall(tool="prune", arguments={"method": "structured", "amount": 0.5})
            return Action(kind="tool", calls=[call], reasoning="prune half", source="llm", strategy="llm")
        return await self.rules.next_action(view)


async def test_a_pruned_candidate_that_misses_is_distilled_and_measured_again() -> None:
    policy = trained_policy()
    criteria = Criteria(
        target_accuracy_threshold=0.97,
        max_size_reduction_percent=40,
        optimization_techniques=["pruning"],
        max_trials=2,
        time_budget_s=120,
        benchmark_iterations=3,
    )
    outcome = await optimize_local_async(policy, criteria, planner=PlainPruneFirst())
    first, second = outcome.trials
    assert [c.tool for c in first.calls] == ["prune"] and first.meets is False and first.status == "rejected"
    assert first.tool_metrics.get("recovery") is None
    assert second.strategy == "recover" and second.base_version == first.base_version == "v0"
    assert (
        [c.tool for c in second.calls] == ["prune", "distill"]
        and second.meets
        and second.status == "accepted"
    )
    # What recovery cost and gained, on the trial itself.
    recovery = second.tool_metrics["recovery"]
    assert recovery["recovers_trial"] == 1 and recovery["steps"] > 0 and 0 < recovery["seconds"] <= 10.0
    assert recovery["accuracy_retained_before"] == round(first.measurement["accuracy_retained"], 6)
    assert recovery["gained_over_trial"] > 0.2 and recovery["steps_by_tool"][0]["how"] == "distillation"
    assert recovery["accuracy_gained"] > 0.2
    # The recorded call is pinned: the steps it ran, no clock, so a replay is exact.
    distill_args = second.calls[1].arguments
    assert distill_args["time_budget_s"] is None and distill_args["steps"] == recovery["steps"]
    assert outcome.selected_version == second.version_id
    replayed = policy
    for call in outcome.recipe:
        replayed = run_call(replayed, call, teacher=policy)
    want, got = outcome.selected.model.state_dict(), replayed.model.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    # Results: the rejected plain pruning is listed apart, never in the Pareto set.
    report = outcome.report
    assert {p["version"] for p in report["pareto_set"]} <= {"v0", "v2"}
    assert all(p["meets_criteria"] for p in report["pareto_set"])
    assert [r["version"] for r in report["rejected"]] == ["v1"]
    assert "below the 97.0% floor" in report["rejected"][0]["reason"]
    summary = report["optimization_summary"]
    assert summary["recovery"]["trials"] == [2] and summary["recovery"]["accepted"] == [2]
    assert summary["techniques_used"] == ["distillation", "pruning"]


def test_a_candidate_at_zero_accuracy_is_never_on_the_pareto_front() -> None:
    """Regression: the smallest, fastest candidate dominated the front at 0% accuracy retained."""
    base = Measurement(size_bytes=1000, latency_p50_ms=1.0, accuracy_retained=1.0)
    broken = Measurement(size_bytes=100, latency_p50_ms=0.2, accuracy_retained=0.0)
    good = Measurement(size_bytes=400, latency_p50_ms=0.8, accuracy_retained=0.99)
    criteria = Criteria(target_accuracy_threshold=0.95).resolved()
    state = {
        "criteria": criteria.model_dump(mode="json"),
        "baseline": base.model_dump(),
        "current_version": "v2",
        "versions": {
            "v0": {"id": "v0", "measurement": base.model_dump(), "recipe": []},
            "v1": {"id": "v1", "trial": 1, "measurement": broken.model_dump(), "recipe": []},
            "v2": {"id": "v2", "trial": 2, "measurement": good.model_dump(), "recipe": []},
        },
        "trials": [
            {
                "number": 1,
                "version_id": "v1",
                "status": "rejected",
                "decision": "accuracy retained 0.00% ...",
            },
            {"number": 2, "version_id": "v2", "status": "accepted", "decision": "meets"},
        ],
    }
    report = build_report(state)
    assert [p["version"] for p in report["pareto_set"]] == ["v0", "v2"]
    assert report["rejected"] == [
        {
            "version": "v1",
            "trial": 1,
            "size_bytes": 100,
            "latency_p50_ms": 0.2,
            "accuracy_retained": 0.0,
            "meets_criteria": False,
            "objective": report["rejected"][0]["objective"],
            "reason": "accuracy retained 0.00% ...",
        }
    ]
