"""evaluate: 1.0 for an untouched copy, far less for a ruined one; task metric vs fidelity; typed errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.tools.conftest import assert_same_weights, mlp_handle, weights_snapshot
from tools.architectures import build_model, input_specs
from tools.errors import DataMismatchError, InvalidArgumentError
from tools.evaluation import EvalResult, evaluate
from tools.handle import ArchitectureRef, EvalData, ModelHandle
from tools.pruning import prune
from tools.runtime import forward, synthesize_inputs


def _registry_handle(name: str, **config: object) -> ModelHandle:
    ref = ArchitectureRef(name=name, config=dict(config))
    return ModelHandle(
        runtime="torch",
        format="state_dict",
        model=build_model(ref),
        inputs=input_specs(ref),
        architecture=ref,
    )


def test_untouched_copy_is_one_and_97_percent_pruned_is_far_less() -> None:
    reference = mlp_handle()
    before = weights_snapshot(reference)
    same = evaluate(reference.clone(), reference=reference)
    assert isinstance(same, EvalResult)
    assert same.metric == "top1_agreement" and not same.uses_targets
    assert same.value == 1.0 and same.accuracy_retained == 1.0
    assert same.cosine_similarity == pytest.approx(1.0) and same.relative_error == pytest.approx(
        0.0, abs=1e-6
    )
    assert same.num_samples == 256 and same.data_source == "synthesized"
    ruined = evaluate(prune(reference, "magnitude", 0.97), reference=reference)
    assert ruined.accuracy_retained < 0.5  # measured 0.012
    assert ruined.relative_error > 0.1 and ruined.cosine_similarity < 0.99
    assert_same_weights(before, weights_snapshot(reference))


def test_classification_targets_give_task_accuracy() -> None:
    reference = mlp_handle()
    x = synthesize_inputs(reference.inputs, 200, seed=5)
    labels = forward(reference, x).argmax(-1)
    labels[:50] = (labels[:50] + 1) % 16  # the reference gets 75% right
    data = EvalData(inputs=x, targets=labels)
    same = evaluate(reference.clone(), reference=reference, data=data)
    assert same.metric == "accuracy" and same.uses_targets and same.data_source == "given"
    assert same.reference_value == pytest.approx(0.75) and same.accuracy_retained == 1.0
    pruned = prune(reference, "magnitude", 0.97)
    pruned.eval_data = data
    worse = evaluate(pruned, reference=reference)
    assert worse.data_source == "eval_data"
    assert worse.value < 0.9 * 0.75 and worse.accuracy_retained == pytest.approx(worse.value / 0.75)


def test_vla_action_token_accuracy() -> None:
    reference = _registry_handle("vla", preset="vla_mini", llm_layers=2)
    x = synthesize_inputs(reference.inputs, 12, seed=2)
    bins = forward(reference, x).argmax(-1)
    data = EvalData(inputs=x, targets=bins.astype(np.int64))
    same = evaluate(reference.clone(), reference=reference, data=data, batch_size=12)
    assert same.metric == "action_token_accuracy" and same.output_kind == "action_tokens"
    assert same.value == 1.0 and same.accuracy_retained == 1.0
    pruned = evaluate(prune(reference, "structured", 0.9), reference=reference, data=data, batch_size=12)
    assert pruned.accuracy_retained < 0.9
    # Continuous actions in [-1, 1] are scored in the same 256 bins (bin centres map back exactly).
    actions = ((bins + 0.5) / 256 * 2 - 1).astype(np.float32)
    continuous = evaluate(reference.clone(), reference=reference, data=EvalData(inputs=x, targets=actions))
    assert continuous.metric == "action_token_accuracy" and continuous.value == 1.0


def test_regression_within_tolerance_and_fidelity() -> None:
    reference = _registry_handle("mlp_policy", obs_dim=8, act_dim=4)
    x = synthesize_inputs(reference.inputs, 128, seed=3)
    actions = forward(reference, x)
    rng = np.random.default_rng(0)
    targets = actions + rng.normal(0, 0.05, actions.shape).astype(np.float32) * actions.std(0)
    same = evaluate(reference.clone(), reference=reference, data=EvalData(inputs=x, targets=targets))
    assert same.metric == "within_tolerance" and same.tolerance == 0.25
    assert same.reference_value > 0.9 and same.accuracy_retained == 1.0 and same.mse is not None
    assert same.top1_agreement is None
    ruined = prune(reference, "magnitude", 0.97)
    assert (
        evaluate(ruined, reference=reference, data=EvalData(inputs=x, targets=targets)).accuracy_retained
        < 0.9
    )
    fidelity = evaluate(ruined, reference=reference)
    assert fidelity.metric == "within_tolerance_of_reference" and fidelity.accuracy_retained < 0.9
    assert evaluate(reference.clone(), reference=reference).accuracy_retained == 1.0


def test_onnx_candidate_against_torch_reference(model_files: dict[str, Path]) -> None:
    reference = mlp_handle()
    candidate = ModelHandle(
        runtime="onnx", format="onnx", model=onnx.load(str(model_files["mlp_onnx"])), inputs=reference.inputs
    )
    result = evaluate(candidate, reference=reference, num_samples=64)
    assert result.accuracy_retained == 1.0 and result.relative_error < 1e-5


def test_mismatched_data_raises_typed_errors() -> None:
    reference = mlp_handle()
    with pytest.raises(DataMismatchError, match="names"):
        evaluate(
            reference, reference=reference, data=EvalData(inputs={"image": np.zeros((4, 64), np.float32)})
        )
    with pytest.raises(DataMismatchError, match="axis 1"):
        evaluate(reference, reference=reference, data=EvalData(inputs={"obs": np.zeros((4, 63), np.float32)}))
    with pytest.raises(DataMismatchError, match="targets"):
        data = EvalData(inputs={"obs": np.zeros((4, 64), np.float32)}, targets=np.zeros(5, np.int64))
        evaluate(reference, reference=reference, data=data)
    with pytest.raises(DataMismatchError, match="targets"):
        data = EvalData(inputs={"obs": np.zeros((4, 64), np.float32)}, targets=np.zeros((4, 3), np.float32))
        evaluate(reference, reference=reference, data=data)
    other = _registry_handle("mlp_policy", obs_dim=64, act_dim=3)
    with pytest.raises(InvalidArgumentError, match="output shape"):
        evaluate(other, reference=reference, num_samples=8)


def test_reference_outputs_are_cached_per_data() -> None:
    reference = mlp_handle()
    first = evaluate(prune(reference, "magnitude", 0.5), reference=reference, num_samples=32)
    cached = reference.cache["evaluate_reference_outputs"][2]
    assert cached.arrays["output"].shape == (32, 16)
    again = evaluate(prune(reference, "magnitude", 0.5), reference=reference, num_samples=32)
    assert reference.cache["evaluate_reference_outputs"][2] is cached and again == first
    x = synthesize_inputs(reference.inputs, 8, seed=9)
    given = evaluate(reference.clone(), reference=reference, data=EvalData(inputs=x))
    assert given.num_samples == 8
    assert reference.cache["evaluate_reference_outputs"][2].arrays["output"].shape == (8, 16)
