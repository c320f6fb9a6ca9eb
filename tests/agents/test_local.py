"""optimize_local: the whole graph in-process on a real small model (the eval harness's entry point)."""

from __future__ import annotations

from agents.criteria import Criteria
from agents.local import optimize_local_async
from tools.architectures import build_model, input_specs
from tools.handle import ArchitectureRef, ModelHandle


def mlp_handle(hidden: list[int] | None = None) -> ModelHandle:
    ref = ArchitectureRef(
        name="mlp_policy", config={"obs_dim": 32, "act_dim": 8, "hidden": hidden or [512, 512]}
    )
    return ModelHandle(
        runtime="torch",
        format="state_dict",
        model=build_model(ref).eval(),
        inputs=input_specs(ref),
        architecture=ref,
    )


async def test_rules_planner_meets_the_criteria_and_reports_a_replayable_recipe() -> None:
    events: list[str] = []
    handle = mlp_handle()
    outcome = await optimize_local_async(
        handle,
        Criteria(target_accuracy_threshold=0.95, max_size_reduction_percent=50, benchmark_iterations=5),
        on_event=lambda t, p: events.append(t),
    )
    summary = outcome.report["optimization_summary"]
    assert summary["criteria_met"] and summary["goal_reached"]
    assert outcome.selected_measurement.size_bytes < 0.5 * outcome.baseline.size_bytes
    assert outcome.selected_measurement.accuracy_retained >= 0.95
    # dynamic int8 reaches the size goal; the rest of the budget looks for a faster variant.
    assert outcome.report["trials"][0]["calls"] == [
        {"tool": "quantize", "arguments": {"method": "dynamic_int8"}}
    ]
    method = outcome.recipe[-1].arguments["method"]
    assert method in ("dynamic_int8", "static_int8")
    assert outcome.selected.recipe[-1]["method"] == method
    assert handle.recipe == []  # the input handle is untouched
    for kind in (
        "analysis",
        "agent.thought",
        "agent.action",
        "tool.result",
        "evaluation",
        "decision",
        "result",
    ):
        assert kind in events
    assert {p["version"] for p in outcome.pareto} >= {"v1"}


async def test_chat_instruction_bans_pruning_and_is_answered() -> None:
    events: list[tuple[str, dict]] = []
    outcome = await optimize_local_async(
        mlp_handle([256, 256]),
        Criteria(criteria_name="max_compression", benchmark_iterations=3, max_trials=4),
        on_event=lambda t, p: events.append((t, p)),
        messages=["no pruning please"],
    )
    replies = [p["content"] for t, p in events if t == "message"]
    assert replies and "No more pruning" in replies[0]
    assert all(c.tool != "prune" for t in outcome.trials for c in t.calls)


async def test_a_candidate_that_does_not_run_is_a_failed_trial_not_a_failed_session(monkeypatch) -> None:
    """A candidate whose forward raises while it is measured (fault injected into every candidate's
    measurement, as a kernel missing for its dtype would) is a failed trial with the cause; the session
    goes on and completes with the original."""
    import agents.graph

    real = agents.graph.measure

    def measure(ctx, handle, criteria, device):  # noqa: ANN001, ANN202
        if handle.recipe:
            raise RuntimeError(
                "The following operation failed in the TorchScript interpreter.\n"
                "  (serialized code)\nRuntimeError: mat1 and mat2 must have the same dtype"
            )
        return real(ctx, handle, criteria, device)

    monkeypatch.setattr(agents.graph, "measure", measure)
    outcome = await optimize_local_async(mlp_handle([64]), Criteria(max_trials=2, benchmark_iterations=3))
    trials = outcome.report["trials"]
    assert trials and all(t["status"] == "failed" for t in trials), trials
    assert trials[0]["error"] == (
        "the candidate does not run: RuntimeError: mat1 and mat2 must have the same dtype"
    )
    assert outcome.report["optimization_summary"]["selected_version"] == "v0"
