"""Mixed precision under a size target: per-layer costs measured, a knapsack over them (tools.sensitivity)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests.tools.conftest import assert_same_weights, weights_snapshot
from tests.tools.policies import trained_policy
from tools import evaluate, quantize
from tools.errors import InvalidArgumentError
from tools.exporting import serialized_size
from tools.handle import ModelHandle
from tools.sensitivity import FLOAT, LayerGroup, knapsack


@pytest.fixture(scope="module")
def policy() -> ModelHandle:
    return trained_policy()


def _ratio(handle: ModelHandle, original: ModelHandle) -> float:
    return serialized_size(handle) / serialized_size(original)


def test_meets_a_size_target_uniform_int8_misses_at_higher_fidelity_than_uniform_4bit(
    policy: ModelHandle,
) -> None:
    int8 = quantize(policy, "dynamic_int8", backend="onnxruntime")
    four = quantize(policy, "weight_only_int4", backend="onnxruntime")
    target = 0.22
    assert _ratio(int8, policy) > target > _ratio(four, policy)
    before = weights_snapshot(policy)

    mixed = quantize(policy, "weight_only_int4", backend="onnxruntime", size_target=target)

    assert_same_weights(before, weights_snapshot(policy))
    assert _ratio(mixed, policy) <= target
    fidelity = {
        name: evaluate(h, reference=policy) for name, h in (("mixed", mixed), ("four", four), ("int8", int8))
    }
    assert fidelity["mixed"].relative_error < fidelity["four"].relative_error
    assert fidelity["mixed"].value > fidelity["four"].value, {k: v.value for k, v in fidelity.items()}
    result = mixed.recipe[-1]["result"]
    summary = result["mixed_precision"]
    assert summary["size_target_met"] and summary["measured_bytes"] == serialized_size(mixed)
    # The target is a fraction of the torch model's size; the export it quantizes has its own size.
    exported = serialized_size(quantize_input(policy))
    scaled = result["size_target_of_export"]
    assert scaled == pytest.approx(target * serialized_size(policy) / exported, abs=1e-6)
    assert summary["size_target_bytes"] == int(scaled * exported)
    assert set(summary["assignment"].values()) >= {"int4"} and len(set(summary["assignment"].values())) >= 2
    assert set(summary["cost_alone"]) == set(summary["assignment"]) and len(summary["assignment"]) == 3
    costs = summary["cost_alone"]
    assert all(by["int4"] >= by["int8"] >= 0 for by in costs.values())
    assert result["layers_8bit"] == [n for n, p in result["layer_precisions"].items() if p == "int8"]
    assert mixed.recipe[-1]["size_target"] == target


def quantize_input(policy: ModelHandle) -> ModelHandle:
    """The float graph the ONNX Runtime path quantizes (a size target is rescaled to it)."""
    from tools.onnx_quantization import as_onnx_handle

    return as_onnx_handle(policy)


def test_torch_int8_mixed_precision_keeps_the_costliest_layers_float(policy: ModelHandle) -> None:
    uniform = quantize(policy, "weight_only_int8")
    mixed = quantize(policy, "weight_only_int8", size_target=0.5)
    assert mixed.runtime == "torch" and _ratio(uniform, policy) < _ratio(mixed, policy) <= 0.5
    result = mixed.recipe[-1]["result"]
    precisions = result["layer_precisions"]
    assert (
        set(precisions) == {"0", "2", "4"}
        and "float" in precisions.values()
        and "int8" in precisions.values()
    )
    assert (
        evaluate(mixed, reference=policy).relative_error < evaluate(uniform, reference=policy).relative_error
    )
    assert [s["tool"] for s in mixed.recipe] == ["quantize"] and result["mixed_precision"]["size_target_met"]
    # One recipe step that replays to the same model (the measurements are deterministic).
    step = {k: v for k, v in mixed.recipe[-1].items() if k not in ("tool", "result")}
    again = quantize(policy, step.pop("method"), **step)
    assert again.recipe[-1]["result"]["layer_precisions"] == precisions


def test_an_unreachable_target_says_so(policy: ModelHandle) -> None:
    mixed = quantize(policy, "weight_only_int8", size_target=0.05)
    summary = mixed.recipe[-1]["result"]["mixed_precision"]
    assert not summary["size_target_met"] and summary["measured_bytes"] > summary["size_target_bytes"]
    # As small as it gets: no larger than every layer at int8.
    assert serialized_size(mixed) <= serialized_size(quantize(policy, "weight_only_int8"))


def test_bad_targets_are_refused(policy: ModelHandle) -> None:
    with pytest.raises(InvalidArgumentError, match="accuracy_target or size_target, not both"):
        quantize(policy, "weight_only_int8", size_target=0.5, accuracy_target=0.99)
    with pytest.raises(InvalidArgumentError, match="accuracy_target or size_target, not both"):
        quantize(policy, "weight_only_int4", size_target=0.5, accuracy_target=0.99)  # torch: one or other
    with pytest.raises(
        InvalidArgumentError, match=r"size_target is a fraction of the current size in \(0, 1\)"
    ):
        quantize(policy, "weight_only_int8", size_target=1.5)
    with pytest.raises(InvalidArgumentError, match="mixed precision .* applies to"):
        quantize(policy, "bf16", size_target=0.6)


def test_knapsack_is_the_least_cost_choice_that_saves_enough() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        groups = [LayerGroup(f"g{i}", [f"g{i}"], 0) for i in range(rng.integers(1, 6))]
        costs, savings = {}, {}
        for g in groups:
            c8 = float(rng.uniform(0, 1))
            costs[g.name] = {FLOAT: 0.0, "int8": c8, "int4": c8 + float(rng.uniform(0, 2))}
            s8 = int(rng.integers(10, 200))  # totals under KNAPSACK_UNITS: the byte axis is exact
            savings[g.name] = {FLOAT: 0, "int8": s8, "int4": s8 + int(rng.integers(1, 150))}
        need = int(rng.integers(0, sum(s["int4"] for s in savings.values()) + 1))
        picked = knapsack(groups, costs, savings, need)
        best = min(
            (sum(costs[g.name][p] for g, p in zip(groups, combo, strict=True)), combo)
            for combo in itertools.product((FLOAT, "int8", "int4"), repeat=len(groups))
            if sum(savings[g.name][p] for g, p in zip(groups, combo, strict=True)) >= need
        )
        assert sum(savings[g.name][picked[g.name]] for g in groups) >= need
        assert sum(costs[g.name][picked[g.name]] for g in groups) == pytest.approx(best[0], abs=1e-9)
    # Infeasible: every group at its largest saving.
    groups = [LayerGroup("a", ["a"], 0)]
    assert knapsack(groups, {"a": {FLOAT: 0.0, "int8": 1.0}}, {"a": {FLOAT: 0, "int8": 10}}, 100) == {
        "a": "int8"
    }


def test_a_split_layer_computes_the_same_function_before_quantization(policy: ModelHandle) -> None:
    """Splitting a MatMul by output channel (4-bit part, int8 part, Concat, Gather back in order) is exact."""
    import onnx

    from tools.onnx_quantization import _gemm_to_matmul, _name_nodes, _split_output_channels
    from tools.runtime import forward

    graph = onnx.ModelProto()
    graph.CopyFrom(quantize_input(policy).model)
    _name_nodes(graph.graph)
    _gemm_to_matmul(graph)
    wide = [n.name for n in graph.graph.node if n.op_type == "MatMul"][1]  # the hidden 128x128 layer
    split, parts = _split_output_channels(graph, {wide: 0.25}, 32)
    assert set(parts) == {wide}
    ops = [n.op_type for n in split.graph.node]
    assert ops.count("MatMul") == 4 and "Concat" in ops and "Gather" in ops
    low = next(t for t in split.graph.initializer if t.name.endswith("_int4_part"))
    assert low.dims == [128, 32]  # a quarter of the output channels
    x = {"obs": policy.eval_data.inputs["obs"][:64]}
    float_out = forward(quantize_input(policy), x)
    split_out = forward(policy.clone(model=split, runtime="onnx", format="onnx", device="cpu"), x)
    np.testing.assert_allclose(split_out, float_out, rtol=1e-5, atol=1e-6)


def test_size_target_between_int8_and_int4_splits_a_layer_and_folds_its_int8(policy: ModelHandle) -> None:
    """A target a little under uniform int8: a fraction of a layer's channels in 4-bit, the rest int8
    folded at load, at less error than every layer it would otherwise put in 4-bit."""
    from tools.onnx_quantization import _weight_only_int8  # noqa: F401 - the int8 path the split takes
    from tools.runtime import session_config

    int8 = quantize(policy, "weight_only_int8", backend="onnxruntime")
    four = quantize(policy, "weight_only_int4", backend="onnxruntime")
    target = 0.98 * serialized_size(int8) / serialized_size(policy)
    mixed = quantize(policy, "weight_only_int4", backend="onnxruntime", size_target=target)
    result = mixed.recipe[-1]["result"]
    assert result["mixed_precision"]["size_target_met"] and _ratio(mixed, policy) < _ratio(int8, policy)
    assert result["layers_split"], result["layer_precisions"]
    assert session_config(mixed.model) == {"session.disable_quant_qdq": "1"} == result["session_config"]
    ops = {n.op_type for n in mixed.model.graph.node}
    assert {"MatMulNBits", "DequantizeLinear", "Concat", "Gather"} <= ops
    err = {k: evaluate(h, reference=policy).relative_error for k, h in (("mixed", mixed), ("four", four))}
    assert err["mixed"] < 0.5 * err["four"], err


def test_with_an_accuracy_target_whole_layers_come_first_and_splits_only_when_they_miss(
    policy: ModelHandle,
) -> None:
    int8 = quantize(policy, "weight_only_int8", backend="onnxruntime")
    target = 0.98 * serialized_size(int8) / serialized_size(policy)
    args = {"backend": "onnxruntime", "size_target": target}
    # A loose accuracy target: the whole-layer mix retains it, so no layer is split.
    loose = quantize(policy, "weight_only_int4", accuracy_target=0.5, **args).recipe[-1]["result"]
    assert loose["mixed_precision"]["size_target_met"] and not loose["layers_split"]
    assert all(":" not in p for p in loose["layer_precisions"].values())
    # A target no whole-layer mix meets at this size: the least-error mix, with a split layer.
    strict = quantize(policy, "weight_only_int4", accuracy_target=1.0, **args).recipe[-1]["result"]
    assert strict["mixed_precision"]["size_target_met"] and strict["layers_split"]
    assert (
        strict["mixed_precision"]["relative_error_measured"]
        < loose["mixed_precision"]["relative_error_measured"]
    )
