"""Criteria validation, presets, the objective and the hard floor."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agents.criteria import Criteria, Measurement, goal_reached, meets, objective, pareto_front
from agents.interpreter import merge, rules_fields

BASE = Measurement(size_bytes=1_000_000, latency_p50_ms=1.0, peak_memory_mb=10.0, accuracy_retained=1.0)


def test_presets_fill_what_the_request_leaves_out() -> None:
    c = Criteria(criteria_name="max_compression").resolved(default_max_trials=7)
    assert c.target_accuracy_threshold == 0.90
    assert c.max_size_reduction_percent == 90.0
    assert c.max_trials == 7
    explicit = Criteria(criteria_name="max_compression", target_accuracy_threshold=0.97).resolved()
    assert explicit.target_accuracy_threshold == 0.97


@pytest.mark.parametrize(
    "body",
    [
        {"target_accuracy_threshold": 1.5},
        {"max_size_reduction_percent": 100},
        {"optimization_techniques": []},
        {"optimization_techniques": ["distillation"]},
        {"optimization_techniques": ["pruning", "pruning"]},
        {"criteria_name": "accuracy_first", "target_accuracy_threshold": 0.5},
        {"optimization_techniques": ["half_precision"], "max_size_reduction_percent": 75},
        {"device": "tpu"},
        {"unknown_field": 1},
    ],
)
def test_invalid_combinations_are_refused(body: dict) -> None:
    with pytest.raises(ValidationError):
        Criteria.model_validate(body)


def test_objective_rewards_size_up_to_the_target_and_punishes_accuracy_loss() -> None:
    c = Criteria(max_size_reduction_percent=50, target_accuracy_threshold=0.95)
    half = BASE.model_copy(update={"size_bytes": 500_000})
    quarter = BASE.model_copy(update={"size_bytes": 250_000})
    lossy = quarter.model_copy(update={"accuracy_retained": 0.96})
    assert objective(c, BASE, BASE) == 0.0
    assert objective(c, BASE, half) > 0.9
    # Beyond the target, more shrinking is not worth more...
    assert objective(c, BASE, quarter) == pytest.approx(objective(c, BASE, half))
    # ...and losing accuracy costs.
    assert objective(c, BASE, lossy) < objective(c, BASE, quarter)
    faster = half.model_copy(update={"latency_p50_ms": 0.5})
    assert objective(c, BASE, faster) > objective(c, BASE, half)
    noise = half.model_copy(update={"latency_p50_ms": 0.98})
    assert objective(c, BASE, noise) == objective(c, BASE, half)


def test_meets_and_goal_reached() -> None:
    c = Criteria(max_size_reduction_percent=50, target_accuracy_threshold=0.95, target_latency_ms=0.8)
    ok = BASE.model_copy(update={"size_bytes": 400_000, "latency_p50_ms": 0.7, "accuracy_retained": 0.97})
    assert meets(c, BASE, ok) and goal_reached(c, BASE, ok)
    assert not meets(c, BASE, ok.model_copy(update={"accuracy_retained": 0.94}))
    assert not meets(c, BASE, ok.model_copy(update={"latency_p50_ms": 0.9}))
    assert not goal_reached(c, BASE, ok.model_copy(update={"size_bytes": 700_000}))


def test_pareto_front_drops_dominated_versions() -> None:
    a = BASE
    b = BASE.model_copy(update={"size_bytes": 300_000, "accuracy_retained": 0.99})
    c = BASE.model_copy(update={"size_bytes": 400_000, "accuracy_retained": 0.98})  # dominated by b
    assert pareto_front([("v0", a), ("v1", b), ("v2", c)]) == ["v0", "v1"]


def test_goal_rules_fill_only_unset_fields() -> None:
    fields = rules_fields("Keep at least 97% of its accuracy, 4x smaller, no pruning, under 5 ms on the CPU")
    assert fields.target_accuracy_threshold == pytest.approx(0.97)
    assert fields.max_size_reduction_percent == pytest.approx(75.0)
    assert fields.optimization_techniques == ["quantization"]
    assert fields.target_latency_ms == 5.0
    assert fields.device == "cpu"
    request = Criteria(target_accuracy_threshold=0.99, goal="x")
    out = merge(request, {"target_accuracy_threshold", "goal"}, fields, "rules")
    assert out.criteria.target_accuracy_threshold == 0.99  # the request wins
    assert out.ignored == {"target_accuracy_threshold": pytest.approx(0.97)}
    assert out.criteria.max_size_reduction_percent == pytest.approx(75.0)
    assert rules_fields("make it half the size for a 100 Hz control loop").target_latency_ms == 10.0
