"""A session's accuracy metric: named in the criteria, used by measure's evaluate, stated in the results."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from agents.criteria import Criteria
from agents.graph import measure
from agents.local import optimize_local_async
from api.schemas.sessions import OptimizeRequest
from tools.architectures import build_model, input_specs
from tools.errors import InvalidArgumentError
from tools.handle import ArchitectureRef, InputSpec, ModelHandle
from tools.pruning import prune


class FeaturesAndScores(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head = nn.Linear(16, 64), nn.Linear(64, 10)

    def forward(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.nn.functional.layer_norm(torch.relu(self.body(obs)), (64,))
        return {"features": features, "logits": self.head(features)}


def _ctx(original: ModelHandle) -> SimpleNamespace:
    return SimpleNamespace(workspace=SimpleNamespace(original=lambda: original))


def test_measure_uses_the_sessions_metric_and_output_and_keeps_the_reason() -> None:
    original = ModelHandle(
        runtime="torch", format="state_dict", model=FeaturesAndScores().eval(),
        inputs=[InputSpec(name="obs", shape=[None, 16])],
    )  # fmt: skip
    candidate = prune(original, "magnitude", 0.9, include=["head"])
    fast = {"benchmark_iterations": 2, "benchmark_warmup": 0}
    worst = measure(_ctx(original), candidate, Criteria(**fast), "cpu")
    assert worst.accuracy_output == "logits" and worst.accuracy_metric == "top1_agreement"
    assert (
        worst.metric_reason and "worst of 2 outputs" in worst.metric_reason and worst.accuracy_retained < 0.95
    )
    named = measure(
        _ctx(original), candidate, Criteria(metric="nn_agreement", output="features", **fast), "cpu"
    )
    assert named.accuracy_output == "features" and named.accuracy_metric == "nn_agreement"
    assert named.accuracy_retained == 1.0 and "named by the request" in (named.metric_reason or "")
    with pytest.raises(InvalidArgumentError, match="does not fit output 'features'"):
        measure(
            _ctx(original), candidate, Criteria(metric="exact_agreement", output="features", **fast), "cpu"
        )


def test_criteria_and_the_request_take_the_metric_and_refuse_unknown_ones() -> None:
    with pytest.raises(ValidationError):
        Criteria(metric="f1")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Criteria(output="")
    request = OptimizeRequest(model_id="m1", metric="centered_cosine", output="features")
    assert request.criteria().metric == "centered_cosine" and request.criteria().output == "features"
    assert {"metric", "output"} <= set(request.explicit_fields())


async def test_a_local_session_reports_the_metric_it_gated_on_and_why() -> None:
    ref = ArchitectureRef(name="mlp_policy", config={"obs_dim": 16, "act_dim": 8, "hidden": [128, 128]})
    handle = ModelHandle(
        runtime="torch", format="state_dict", model=build_model(ref).eval(), inputs=input_specs(ref),
        architecture=ref,
    )  # fmt: skip
    criteria = Criteria(metric="centered_cosine", max_trials=1, benchmark_iterations=3, benchmark_warmup=0)
    outcome = await optimize_local_async(handle, criteria)
    summary = outcome.report["optimization_summary"]
    assert summary["accuracy_metric"] == "centered_cosine" and summary["accuracy_output"] == "output"
    assert "named by the request" in summary["metric_reason"] and "mlp_policy" in summary["metric_reason"]
    assert outcome.baseline.accuracy_metric == "centered_cosine"
    accuracy = outcome.report["performance_improvements"]["accuracy_retained"]
    assert accuracy["metric"] == "centered_cosine" and accuracy["metric_reason"] == summary["metric_reason"]
    measured = [t["measurement"] for t in outcome.report["trials"] if t.get("measurement")]
    assert measured and all(m["accuracy_metric"] == "centered_cosine" for m in measured)


class Slowed(nn.Module):
    """The same network, 3 ms slower per call: what a loaded CPU does to one measurement and not another."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.003)
        return self.inner(obs)


def test_paired_latencies_are_measured_side_by_side() -> None:
    from agents.graph import paired_p50

    ref = ArchitectureRef(name="mlp_policy", config={"obs_dim": 8, "act_dim": 2, "hidden": [32]})
    net = build_model(ref).eval()
    fast = ModelHandle(
        runtime="torch", format="state_dict", model=net, inputs=input_specs(ref), architecture=ref
    )
    slow = fast.clone(model=Slowed(net))
    criteria = Criteria(benchmark_iterations=5, benchmark_warmup=1)
    fast_p50, slow_p50 = paired_p50([fast, slow], criteria, "cpu")
    assert slow_p50 - fast_p50 >= 2.5 and fast_p50 < 2.5


async def test_the_gate_compares_a_candidate_with_the_current_version_measured_side_by_side() -> None:
    ref = ArchitectureRef(name="mlp_policy", config={"obs_dim": 12, "act_dim": 3, "hidden": [256, 256]})
    torch.manual_seed(0)
    handle = ModelHandle(
        runtime="torch",
        format="state_dict",
        model=build_model(ref).eval(),
        inputs=input_specs(ref),
        architecture=ref,
    )
    criteria = {"criteria_name": "balanced_optimization", "target_accuracy_threshold": 0.9, "max_trials": 3}
    outcome = await optimize_local_async(handle, criteria)
    trials = [t for t in outcome.report["trials"] if t.get("meets")]
    assert trials, outcome.report["trials"]
    versions = {"v0": outcome.baseline.latency_p50_ms}
    for t in outcome.report["trials"]:
        paired = (t.get("tool_metrics") or {}).get("paired_latency")
        if t.get("meets"):
            assert paired is not None and paired["against"] in versions
            # The candidate's latency is the current version's, times the ratio measured side by side.
            expected = versions[paired["against"]] * paired["ratio"]
            assert abs(t["measurement"]["latency_p50_ms"] - expected) <= 1e-3 * expected + 1e-6
            assert paired["unpaired_p50_ms"] > 0
        else:
            assert paired is None
        if t["status"] == "accepted":
            versions[t["version_id"]] = t["measurement"]["latency_p50_ms"]
