"""quantize(recovery="qat"): beats post-training int8 where that loses accuracy, on the same kernels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.tools.conftest import assert_same_weights, weights_snapshot
from tests.tools.policies import OBS, trained_policy, with_outlier_channels
from tools import evaluate, export, load_model, quantize
from tools.errors import InvalidArgumentError, UnsupportedFormatError
from tools.exporting import serialized_size
from tools.handle import EvalData, ModelHandle

QAT = {"recovery": "qat", "recovery_steps": 300, "recovery_time_s": None}


@pytest.fixture(scope="module")
def outliers() -> ModelHandle:
    """A ReLU policy with four hidden channels 30x wider than the rest: per-tensor int8 activations lose
    the other channels' resolution."""
    return with_outlier_channels(trained_policy(nn.ReLU))


def _value(handle: ModelHandle, reference: ModelHandle, data: EvalData | None = None) -> float:
    return float(evaluate(handle, reference=reference, data=data).value)


def _layer_types(handle: ModelHandle) -> Counter[str]:
    if handle.runtime == "onnx":
        return Counter(n.op_type for n in handle.model.graph.node)
    return Counter(type(m).__name__ for m in handle.model.modules())


def test_qat_int8_beats_post_training_int8_where_that_loses_two_points(outliers: ModelHandle) -> None:
    """On the half of the evaluation data training never saw (the gate's, for a trained model)."""
    assert outliers.eval_data is not None
    unseen = (outliers.eval_data.halves() or (None, None))[1]
    assert unseen is not None
    original = _value(outliers, outliers, unseen)
    ptq = quantize(outliers, "dynamic_int8")
    lost = _value(ptq, outliers, unseen)
    assert original - lost >= 0.02, (original, lost)
    before = weights_snapshot(outliers)

    qat = quantize(outliers, "dynamic_int8", **QAT)

    gained = _value(qat, outliers)
    assert gained == _value(qat, outliers, unseen)
    assert qat.recipe[-1]["result"]["recovery"]["held_out_samples"] == unseen.num_samples
    assert gained >= lost + 0.02, (original, lost, gained)
    assert qat.recipe[-1]["result"]["recovery"]["kept"] == "trained"
    assert_same_weights(before, weights_snapshot(outliers))
    # The same kernels as the post-training result: torch.ao's dynamic int8 layers, the same bytes.
    assert _layer_types(qat) == _layer_types(ptq)
    assert {type(m).__module__ for m in qat.model.modules()} >= {
        "torch.ao.nn.quantized.dynamic.modules.linear"
    }
    assert abs(serialized_size(qat) - serialized_size(ptq)) <= 64
    step = qat.recipe[-1]
    assert step["tool"] == "quantize" and step["method"] == "dynamic_int8" and step["recovery"] == "qat"
    assert step["result"]["backend"] == "torch.ao"
    recovery = step["result"]["recovery"]
    assert recovery["kernel_path"] == "torch.ao" and recovery["steps_run"] == 300
    assert "per tensor" in recovery["fake_quantization"]["0"]
    assert recovery["accuracy_retained_before"] == pytest.approx(lost / original, abs=1e-5)
    assert recovery["accuracy_retained_after"] == pytest.approx(gained / original, abs=1e-5)
    assert recovery["accuracy_gained"] >= 0.02 and recovery["curve"][0]["step"] == 0
    assert step["result"]["replay"] == {"recovery_steps": 300, "recovery_time_s": None}


@pytest.mark.parametrize(
    ("method", "op"), [("dynamic_int8", "DynamicQuantizeLinear"), ("weight_only_int4", "MatMulNBits")]
)
def test_onnx_runtime_kernels_are_the_post_training_ones(outliers: ModelHandle, method: str, op: str) -> None:
    ptq = quantize(outliers, method, backend="onnxruntime")
    qat = quantize(outliers, method, backend="onnxruntime", **{**QAT, "recovery_steps": 150})
    assert qat.runtime == "onnx" and _layer_types(qat) == _layer_types(ptq) and _layer_types(qat)[op] >= 1
    recovery = qat.recipe[-1]["result"]["recovery"]
    assert recovery["kernel_path"] == "onnxruntime"
    assert recovery["val_loss_after"] <= recovery["val_loss_before"]
    # Never worse on the kernel than post-training quantization: the better of the two is kept, and said.
    assert recovery["accuracy_retained_after"] == max(
        recovery["accuracy_retained_before"], recovery["accuracy_retained_trained"]
    )
    kept = (
        "trained"
        if recovery["accuracy_retained_trained"] >= recovery["accuracy_retained_before"]
        else "post_training"
    )
    assert recovery["kept"] == kept
    measured = evaluate(qat, reference=outliers).accuracy_retained
    assert measured == pytest.approx(recovery["accuracy_retained_after"], abs=1e-5)


def test_pt2_weight_only_int8_keeps_portable_layers(outliers: ModelHandle, tmp_path: Path) -> None:
    program = torch.export.export(
        outliers.model, (torch.zeros(2, OBS),), dynamic_shapes=({0: torch.export.Dim("b")},)
    )
    torch.export.save(program, tmp_path / "policy.pt2")
    handle = load_model(tmp_path / "policy.pt2")
    handle.eval_data = EvalData({"input": outliers.eval_data.inputs["obs"]}, outliers.eval_data.targets)
    qat = quantize(handle, "weight_only_int8", **{**QAT, "recovery_steps": 60})
    assert qat.format == "pt2" and _layer_types(qat)["Int8WeightLinear"] == 3
    assert _layer_types(qat) == _layer_types(quantize(handle, "weight_only_int8"))
    again = load_model(export(qat, "pt2", tmp_path / "qat.pt2"))
    x = torch.from_numpy(handle.eval_data.inputs["input"][:4])
    torch.testing.assert_close(again.model(x), qat.model(x), rtol=1e-4, atol=1e-5)


def test_qat_is_refused_where_it_cannot_apply(outliers: ModelHandle) -> None:
    with pytest.raises(InvalidArgumentError, match="recovery='qat' applies to dynamic_int8"):
        quantize(outliers, "static_int8", **QAT)
    onnx_model = quantize(outliers, "fp16", backend="onnxruntime")
    with pytest.raises(UnsupportedFormatError, match="ONNX graph"):
        quantize(onnx_model, "dynamic_int8", **QAT)
    with pytest.raises(InvalidArgumentError, match="omit accuracy_target and size_target"):
        quantize(outliers, "dynamic_int8", accuracy_target=0.99, **QAT)
    with pytest.raises(InvalidArgumentError, match="unknown recovery"):
        quantize(outliers, "dynamic_int8", recovery="finetune")
    with pytest.raises(InvalidArgumentError, match="recovery_time_s must be positive"):
        quantize(outliers, "dynamic_int8", recovery="qat", recovery_time_s=0)
    with pytest.raises(InvalidArgumentError, match="recovery_steps must be at least 1"):
        quantize(outliers, "dynamic_int8", recovery="qat", recovery_steps=0)


class _PerToken(nn.Module):
    """Linear layers over [batch, tokens, features], as a transformer's are."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def test_token_activations_are_fake_quantized_per_row_of_blocks() -> None:
    from tools.handle import InputSpec

    torch.manual_seed(0)
    handle = ModelHandle(runtime="torch", format="state_dict", model=_PerToken().eval(),
                         inputs=[InputSpec(name="tokens", shape=[None, 4, 32])])  # fmt: skip
    qat = quantize(handle, "weight_only_int4", backend="onnxruntime", **{**QAT, "recovery_steps": 20})
    recovery = qat.recipe[-1]["result"]["recovery"]
    assert (
        recovery["fake_quantization"]["up"]
        == "4-bit blocks of 32; activations int8 blocks (MatMulNBits accuracy level 4)"
    )
    assert _layer_types(qat) == _layer_types(quantize(handle, "weight_only_int4", backend="onnxruntime"))
