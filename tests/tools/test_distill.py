"""distill: a pruned policy gets its task metric back from its teacher; every format; unhappy paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.tools.conftest import assert_same_weights, weights_snapshot
from tests.tools.policies import ACT, INPUTS, OBS, trained_policy
from tools import distill, evaluate, export, load_model, prune, quantize
from tools.errors import DataMismatchError, InvalidArgumentError, UnsupportedFormatError
from tools.handle import EvalData, InputSpec, ModelHandle


@pytest.fixture(scope="module")
def policy() -> ModelHandle:
    return trained_policy()


def _value(handle: ModelHandle, reference: ModelHandle, data: EvalData | None = None) -> float:
    result = evaluate(handle, reference=reference, data=data)
    assert result.metric == "within_tolerance" and result.uses_targets
    return float(result.value)


def test_structured_pruning_loses_20_points_and_distill_brings_them_back(policy: ModelHandle) -> None:
    """Measured on the half of the evaluation data distillation never trained on, as the gate measures it."""
    assert policy.eval_data is not None
    fit, unseen = policy.eval_data.halves() or (None, None)
    assert fit is not None and unseen is not None and unseen.num_samples == 512
    original = _value(policy, policy, unseen)
    assert original >= 0.9
    pruned = prune(policy, "structured", 0.5)
    lost = _value(pruned, policy, unseen)
    assert original - lost >= 0.20, (original, lost)
    before = weights_snapshot(pruned)
    teacher_before = weights_snapshot(policy)

    recovered = distill(pruned, policy, steps=1000, time_budget_s=None, learning_rate=3e-3, batch_size=256)

    back = _value(recovered, policy)  # a trained handle: evaluate picks the unseen half itself
    assert evaluate(recovered, reference=policy).data_source == "eval_data_held_out"
    assert back == _value(recovered, policy, unseen)
    assert back >= original - 0.01, (original, lost, back)
    # On the half it trained on it does better still: what the gate would have read without the split.
    assert _value(recovered, policy, fit) > back
    assert_same_weights(before, weights_snapshot(pruned))  # neither input is touched
    assert_same_weights(teacher_before, weights_snapshot(policy))
    step = recovered.recipe[-1]
    assert [s["tool"] for s in recovered.recipe] == ["prune", "distill"]
    result = step["result"]
    assert result["losses"] == {"output": "mse"} and "regression" in result["loss_reasons"]["output"]
    assert (
        result["data_source"] == "eval_data"
        and result["steps_run"] == 1000
        and result["stopped_by"] == "steps"
        and result["held_out_samples"] == 512
    )
    assert result["val_samples"] == 102 and result["train_samples"] == 410
    assert result["val_loss_after"] < 0.2 * result["val_loss_before"]
    assert result["accuracy_retained_before"] == pytest.approx(lost / original, abs=1e-5)
    assert result["accuracy_retained_after"] == pytest.approx(back / original, abs=1e-5)
    assert result["accuracy_gained"] > 0.2
    curve = result["curve"]
    assert curve[0]["step"] == 0 and curve[-1]["step"] == 1000 and len(curve) == 41
    assert recovered.metadata["distillation"]["steps_run"] == 1000
    assert result["replay"] == {"steps": 1000, "time_budget_s": None}
    # Pruned widths stay pruned: distillation trains weights, it does not grow layers back.
    assert recovered.model[2].weight.shape == pruned.model[2].weight.shape


def test_deterministic_under_a_seed_and_a_time_cut_replays_exactly(policy: ModelHandle) -> None:
    pruned = prune(policy, "structured", 0.5)
    a = distill(pruned, policy, steps=40, time_budget_s=None, seed=3)
    b = distill(pruned, policy, steps=40, time_budget_s=None, seed=3)
    c = distill(pruned, policy, steps=40, time_budget_s=None, seed=4)
    assert_same_weights(weights_snapshot(a), weights_snapshot(b))
    assert not torch.equal(a.model[0].weight, c.model[0].weight)

    cut = distill(pruned, policy, steps=100_000, time_budget_s=0.5, seed=3)
    result = cut.recipe[-1]["result"]
    assert result["stopped_by"] == "time" and 0 < result["steps_run"] < 100_000
    assert result["seconds"] < 5.0
    again = distill(pruned, policy, seed=3, **result["replay"])
    assert again.recipe[-1]["result"]["stopped_by"] == "steps"
    assert_same_weights(weights_snapshot(cut), weights_snapshot(again))


def test_loss_fits_the_output_kind() -> None:
    torch.manual_seed(0)
    classes = nn.Sequential(nn.Linear(OBS, 32), nn.ReLU(), nn.Linear(32, 5))
    logits = ModelHandle(runtime="torch", format="state_dict", model=classes.eval(), inputs=list(INPUTS),
                         metadata={"output_kind": "logits"})  # fmt: skip
    result = distill(prune(logits, "structured", 0.5), logits, steps=20, time_budget_s=None).recipe[-1][
        "result"
    ]
    assert result["losses"] == {"output": "kl"} and result["data_source"] == "synthesized"
    embed = logits.clone(metadata={"output_kind": "embedding"})
    result = distill(prune(embed, "structured", 0.5), embed, steps=20, time_budget_s=None).recipe[-1][
        "result"
    ]
    assert result["losses"] == {"output": "cosine"}
    forced = distill(prune(embed, "structured", 0.5), embed, steps=20, time_budget_s=None, loss="mse")
    assert forced.recipe[-1]["result"]["losses"] == {"output": "mse"}


def test_pt2_and_torchscript_students_keep_their_format(policy: ModelHandle, tmp_path: Path) -> None:
    example = torch.zeros(2, OBS)
    program = torch.export.export(policy.model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "policy.pt2")
    torch.jit.save(torch.jit.trace(policy.model, example), tmp_path / "policy.pt")
    for name, fmt in (("policy.pt2", "pt2"), ("policy.pt", "torchscript")):
        teacher = load_model(tmp_path / name)
        assert [s.name for s in teacher.inputs] == ["input"]  # nn.Sequential's forward argument
        teacher.eval_data = EvalData({"input": policy.eval_data.inputs["obs"]}, policy.eval_data.targets)
        pruned = prune(teacher, "structured", 0.5)
        recovered = distill(
            pruned, teacher, steps=150, time_budget_s=None, learning_rate=3e-3, batch_size=128
        )
        result = recovered.recipe[-1]["result"]
        assert recovered.format == fmt and recovered.runtime == "torch"
        assert result["accuracy_retained_after"] > result["accuracy_retained_before"] + 0.3, (fmt, result)
        path = export(recovered, fmt, tmp_path / f"recovered-{name}")
        again = load_model(path)
        x = policy.eval_data.inputs["obs"][:4]
        with torch.no_grad():
            want = recovered.model(torch.from_numpy(x))
            got = again.model(torch.from_numpy(x))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_onnx_candidate_is_refused_with_the_reason(policy: ModelHandle) -> None:
    onnx_candidate = quantize(policy, "dynamic_int8", backend="onnxruntime")
    with pytest.raises(UnsupportedFormatError, match="ONNX Runtime runs it but cannot train it"):
        distill(onnx_candidate, policy)


def test_a_teacher_with_other_inputs_or_outputs_is_refused(policy: ModelHandle) -> None:
    pruned = prune(policy, "structured", 0.5)
    renamed = policy.clone(inputs=[InputSpec(name="state", shape=[None, OBS])])
    with pytest.raises(
        DataMismatchError, match=r"teacher's inputs \['state'\] differ from the candidate's \['obs'\]"
    ):
        distill(pruned, renamed)
    torch.manual_seed(1)
    other = nn.Sequential(nn.Linear(OBS, 16), nn.Linear(16, 3))
    wider = ModelHandle(runtime="torch", format="state_dict", model=other, inputs=list(INPUTS))
    with pytest.raises(DataMismatchError, match=r"output 'output' has shape \[batch, 2\].*\[batch, 3\]"):
        distill(pruned, wider)
    two_headed = ModelHandle(
        runtime="torch", format="state_dict", model=_TwoHeads().eval(), inputs=list(INPUTS)
    )
    with pytest.raises(DataMismatchError, match="the teacher has 2 outputs"):
        distill(pruned, two_headed)


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(OBS, ACT), nn.Linear(OBS, ACT)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x), self.b(x)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"time_budget_s": 0}, "time_budget_s: Input should be greater than 0"),
        ({"steps": 0}, "steps: Input should be greater than or equal to 1"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"loss": "hinge"}, "loss"),
    ],
)
def test_a_zero_budget_or_a_bad_argument_is_a_typed_error(
    policy: ModelHandle, arguments: dict, message: str
) -> None:
    pruned = prune(policy, "structured", 0.5)
    before = weights_snapshot(pruned)
    with pytest.raises(InvalidArgumentError, match=message) as info:
        distill(pruned, policy, **arguments)
    assert info.value.code == "invalid_argument" and str(info.value).startswith(
        "invalid arguments for distill"
    )
    assert_same_weights(before, weights_snapshot(pruned))


def test_data_without_samples_is_refused(policy: ModelHandle) -> None:
    pruned = prune(policy, "structured", 0.5)
    empty = EvalData(inputs={"obs": np.zeros((0, OBS), np.float32)})
    with pytest.raises(DataMismatchError, match="holds no samples") as info:
        distill(pruned, policy, data=empty)
    assert info.value.code == "data_mismatch"
    with pytest.raises(DataMismatchError, match="input names"):
        distill(pruned, policy, data=EvalData(inputs={"state": np.zeros((4, OBS), np.float32)}))


def test_a_fully_quantized_candidate_points_to_qat(policy: ModelHandle) -> None:
    quantized = quantize(policy, "dynamic_int8")  # torch.ao: packed weights, nothing left to train
    with pytest.raises(InvalidArgumentError, match="recovery='qat'"):
        distill(quantized, policy, steps=5)


def test_augmentation_fits_the_input_kind() -> None:
    from tools.distillation import _input_stats, augment_inputs

    specs = [
        InputSpec(name="image", shape=[None, 3, 8, 8]),
        InputSpec(name="ids", shape=[None, 6], dtype="int64", low=3, high=9),
        InputSpec(name="mask", shape=[None, 6], dtype="bool"),
    ]
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.uniform(-1, 1, (256, 3, 8, 8)).astype(np.float32),
        "ids": rng.integers(3, 9, (256, 6)),
        "mask": np.ones((256, 6), bool),
    }
    out = augment_inputs(batch, specs, _input_stats(specs, batch), np.random.default_rng(1), noise=0.05)
    changed = out["ids"] != batch["ids"]
    assert 0.03 < changed.mean() < 0.15  # about a tenth resampled (some draw their old value)
    assert out["ids"].min() >= 3 and out["ids"].max() <= 8 and out["ids"].dtype == batch["ids"].dtype
    assert np.array_equal(out["mask"], batch["mask"])
    assert out["image"].dtype == np.float32 and not np.allclose(out["image"], batch["image"])
