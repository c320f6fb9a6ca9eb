"""quantize: real int8/fp16 models that are smaller, close to the original, and never touch the input.

Tolerances (relative L2 error of the outputs on 16 synthesized inputs, measured on this MLP):
dynamic int8 torch.ao ~1.4%, ONNX Runtime dynamic ~1.2%, static QDQ ~1.8%, torchao weight-only ~0.6%,
fp16 ~0.05%, bf16 ~0.4%. The assertions allow about 3x that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tools.conftest import assert_same_weights, cnn_handle, mlp_handle, weights_snapshot
from tools.errors import (
    InvalidArgumentError,
    UnknownMethodError,
    UnsupportedDeviceError,
    UnsupportedFormatError,
)
from tools.exporting import serialized_size, to_onnx_model
from tools.handle import ModelHandle
from tools.quantization import quantize
from tools.runtime import forward, synthesize_inputs


def _rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _onnx(handle: ModelHandle) -> ModelHandle:
    return handle.clone(model=to_onnx_model(handle), runtime="onnx", format="onnx")


@pytest.fixture(scope="module")
def mlp_onnx() -> ModelHandle:
    return _onnx(mlp_handle())


@pytest.mark.parametrize(
    ("method", "ratio", "tolerance", "backend"),
    [
        ("dynamic_int8", 0.30, 0.05, "torch.ao"),
        ("weight_only_int8", 0.30, 0.02, "torchao"),
        ("static_int8", 0.30, 0.06, "onnxruntime"),
        ("fp16", 0.51, 0.002, "torch"),
        ("bf16", 0.51, 0.015, "torch"),
    ],
)
def test_torch_quantization_shrinks_and_stays_close(
    method: str, ratio: float, tolerance: float, backend: str
) -> None:
    handle = mlp_handle()
    before = weights_snapshot(handle)
    x = synthesize_inputs(handle.inputs, batch_size=16, seed=1)
    reference = forward(handle, x)
    quantized = quantize(handle, method)
    assert serialized_size(quantized) <= ratio * serialized_size(handle)
    assert _rel_error(forward(quantized, x), reference) < tolerance
    assert quantized.recipe[-1]["tool"] == "quantize" and quantized.recipe[-1]["method"] == method
    assert quantized.recipe[-1]["result"]["backend"] == backend
    assert_same_weights(before, weights_snapshot(handle))
    assert handle.recipe == [] and handle.runtime == "torch"


@pytest.mark.parametrize(
    ("method", "ratio", "tolerance"),
    [("dynamic_int8", 0.30, 0.05), ("static_int8", 0.30, 0.06), ("fp16", 0.51, 0.002)],
)
def test_onnx_quantization_shrinks_and_stays_close(
    mlp_onnx: ModelHandle, method: str, ratio: float, tolerance: float
) -> None:
    before = weights_snapshot(mlp_onnx)
    x = synthesize_inputs(mlp_onnx.inputs, batch_size=16, seed=1)
    reference = forward(mlp_onnx, x)
    quantized = quantize(mlp_onnx, method)
    assert quantized.runtime == "onnx"
    assert serialized_size(quantized) <= ratio * serialized_size(mlp_onnx)
    assert _rel_error(forward(quantized, x), reference) < tolerance
    ops = {n.op_type for n in quantized.model.graph.node}
    if method == "dynamic_int8":
        assert "MatMulInteger" in ops
    if method == "static_int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert_same_weights(before, weights_snapshot(mlp_onnx))


def test_include_exclude_keep_layers_in_full_precision(mlp_onnx: ModelHandle) -> None:
    handle = mlp_handle()
    q = quantize(handle, "dynamic_int8", exclude=["head"])
    assert q.recipe[-1]["result"]["layers"] == ["encoder.0", "encoder.2"]
    assert isinstance(q.model.head, torch.nn.Linear) and type(q.model.head).__module__.startswith("torch.nn")
    assert not type(q.model.encoder[0]).__module__.startswith("torch.nn.modules")
    only = quantize(handle, "weight_only_int8", include=["encoder.2"])
    assert only.recipe[-1]["result"]["layers"] == ["encoder.2"]
    assert type(only.model.encoder[0].weight.data) is torch.Tensor
    assert type(only.model.encoder[2].weight.data) is not torch.Tensor
    q_onnx = quantize(mlp_onnx, "dynamic_int8", exclude=["*head*"])
    assert (
        all("head" not in name for name in q_onnx.recipe[-1]["result"]["layers"])
        and len(q_onnx.recipe[-1]["result"]["layers"]) == 2
    )
    partial = quantize(handle, "fp16", exclude=["head"])
    assert (
        partial.model.head.weight.dtype == torch.float32
        and partial.model.encoder[0].weight.dtype == torch.float16
    )
    x = synthesize_inputs(handle.inputs, batch_size=4)
    assert _rel_error(forward(partial, x), forward(handle, x)) < 0.002


def _onnx_weight_dtypes(handle: ModelHandle) -> dict[str, set[str]]:
    """{module: dtypes of its weight initializers} for the MLP's three Linear layers in an ONNX graph."""
    from onnx import helper

    out: dict[str, set[str]] = {}
    for t in handle.model.graph.initializer:
        for module in ("encoder.0", "encoder.2", "head"):
            if t.name.startswith(module + ".weight"):
                out.setdefault(module, set()).add(str(helper.tensor_dtype_to_np_dtype(t.data_type)))
    return out


@pytest.mark.parametrize(
    ("method", "backend", "low"),
    [
        ("static_int8", "auto", "int8"),
        ("dynamic_int8", "onnxruntime", "int8"),
        ("fp16", "onnxruntime", "float16"),
    ],
)
def test_torch_layer_names_select_layers_through_onnx(method: str, backend: str, low: str) -> None:
    """Patterns written with torch module names (as inspect_model and the rules planner give them) select
    the same layers when a torch model is quantized through ONNX Runtime."""
    handle = mlp_handle()
    x = synthesize_inputs(handle.inputs, batch_size=8, seed=1)
    q = quantize(handle, method, exclude=["head"], backend=backend)
    assert q.runtime == "onnx" and q.recipe[-1]["result"]["kept_float"] == ["head"]
    dtypes = _onnx_weight_dtypes(q)
    assert low not in dtypes["head"] and "float32" in dtypes["head"], dtypes
    assert low in dtypes["encoder.0"] and low in dtypes["encoder.2"], dtypes
    assert _rel_error(forward(q, x), forward(handle, x)) < 0.06
    only = quantize(handle, method, include=["encoder.0"], backend=backend)
    assert only.recipe[-1]["result"]["kept_float"] == ["encoder.2", "head"]
    dtypes = _onnx_weight_dtypes(only)
    assert low in dtypes["encoder.0"] and low not in dtypes["encoder.2"] | dtypes["head"], dtypes
    # The user's block patterns ("don't quantize the encoder" -> 'encoder*') work the same way.
    blocked = quantize(handle, method, exclude=["encoder*"], backend=backend)
    assert blocked.recipe[-1]["result"]["kept_float"] == ["encoder.0", "encoder.2"]


def test_module_path_of_exported_nodes() -> None:
    from onnx import helper

    from tools.quantization import onnx_module_path

    def node(name: str, *inputs: str) -> object:
        return helper.make_node("MatMul", list(inputs) or ["x", "w"], ["y"], name=name)

    assert onnx_module_path(node("/head/Gemm")) == "head"
    assert onnx_module_path(node("/encoder/encoder.0/Gemm")) == "encoder.0"
    assert (
        onnx_module_path(node("/vision_dino/blocks.0/attn/q_proj/MatMul"))
        == "vision_dino.blocks.0.attn.q_proj"
    )
    assert onnx_module_path(node("/layers.1/mlp/up_proj/MatMul")) == "layers.1.mlp.up_proj"
    assert onnx_module_path(node("node_linear_3", "x", "head.weight"), ["head.weight"]) == "head"
    assert onnx_module_path(node("MatMul_0", "x", "onnx::MatMul_12"), ["onnx::MatMul_12"]) is None


def test_cnn_static_int8_calibrates_on_eval_data() -> None:
    from tools.handle import EvalData

    handle = cnn_handle()
    handle.eval_data = EvalData(inputs=synthesize_inputs(handle.inputs, batch_size=24, seed=5))
    q = quantize(handle, "static_int8", calibration_samples=16, layer_types=["Conv2d"])
    assert (
        q.recipe[-1]["result"]["calibration_source"] == "eval_data"
        and q.recipe[-1]["result"]["exported_to_onnx"]
    )
    assert (
        all(name.endswith("Conv") for name in q.recipe[-1]["result"]["layers"])
        and len(q.recipe[-1]["result"]["layers"]) == 2
    )
    x = synthesize_inputs(handle.inputs, batch_size=8, seed=2)
    assert _rel_error(forward(q, x), forward(handle, x)) < 0.05


def test_typed_errors() -> None:
    handle = mlp_handle()
    with pytest.raises(UnknownMethodError, match="int3"):
        quantize(handle, "int3")
    if not torch.cuda.is_available():
        for method in ("weight_only_int4", "bnb_int8", "bnb_nf4"):
            with pytest.raises(UnsupportedDeviceError, match="CUDA"):
                quantize(handle, method)
    with pytest.raises(InvalidArgumentError, match="no layer"):
        quantize(handle, "dynamic_int8", include=["does.not.exist"])
    with pytest.raises(InvalidArgumentError, match="Linear layers only"):
        quantize(handle, "weight_only_int8", layer_types=["Conv2d"])
    with pytest.raises(InvalidArgumentError, match="backend"):
        quantize(handle, "dynamic_int8", backend="tensorrt")
    with pytest.raises(InvalidArgumentError, match="calibration_samples"):
        quantize(handle, "static_int8", calibration_samples=0)


def test_onnx_refuses_torch_only_methods(mlp_onnx: ModelHandle) -> None:
    with pytest.raises(UnsupportedFormatError, match="fp16"):
        quantize(mlp_onnx, "bf16")


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_torchscript_and_pt2_get_the_torch_paths(tmp_path: Path, fmt: str) -> None:
    """TorchScript and .pt2 models are quantized on their module tree and stay torch models (they used to
    go through ONNX for int8 and to refuse weight_only_int8); backend='onnxruntime' still converts."""
    from tools.exporting import export
    from tools.loading import load_model

    handle = mlp_handle()
    x = synthesize_inputs(handle.inputs, batch_size=4)
    loaded = load_model(export(handle, fmt, tmp_path / f"m.{'pt' if fmt == 'torchscript' else 'pt2'}"))
    for method in ("dynamic_int8", "weight_only_int8"):
        q = quantize(loaded, method)
        assert q.runtime == "torch" and q.format == fmt and "exported_to_onnx" not in q.recipe[-1]["result"]
        assert serialized_size(q) <= 0.30 * serialized_size(handle)
        assert _rel_error(forward(q, x), forward(handle, x)) < 0.05
    via_ort = quantize(loaded, "dynamic_int8", backend="onnxruntime")
    assert via_ort.runtime == "onnx" and via_ort.recipe[-1]["result"]["exported_to_onnx"]
    half = quantize(loaded, "fp16")
    assert half.runtime == "torch" and _rel_error(forward(half, x), forward(handle, x)) < 0.002


class _BatchNormNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.norm = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.norm(self.conv(x)))).flatten(1))


def test_an_onnx_export_leaves_a_pt2_models_modes_as_they_were(tmp_path: Path) -> None:
    """torch's TorchScript-based ONNX exporter sets a module tree back to training afterwards; a .pt2
    model's batch norms then refused a batch of 1 in every later benchmark of the original."""
    from tools.exporting import export
    from tools.handle import InputSpec
    from tools.loading import load_model
    from tools.runtime import torch_forward

    torch.manual_seed(0)
    net = ModelHandle(
        runtime="torch", format="state_dict", model=_BatchNormNet().eval(),
        inputs=[InputSpec(name="x", shape=[None, 3, 16, 16])],
    )  # fmt: skip
    loaded = load_model(export(net, "pt2", tmp_path / "m.pt2"))
    modes = {name: m.training for name, m in loaded.model.named_modules()}
    x = synthesize_inputs(loaded.inputs, batch_size=1)
    before = forward(loaded, x)
    quantize(loaded, "static_int8")  # through ONNX Runtime: exported to ONNX first
    assert {name: m.training for name, m in loaded.model.named_modules()} == modes
    tensors = [torch.from_numpy(x["x"])]
    np.testing.assert_allclose(torch_forward(loaded, tensors).detach().numpy(), before, rtol=1e-5, atol=1e-6)


def test_bitsandbytes_layer_swap_on_bnb_cpu_backend() -> None:
    """The bnb module swap itself (the public methods insist on CUDA), run on bitsandbytes' CPU backend."""
    import copy

    from tools.quantization import _bnb_replace

    handle = mlp_handle()
    x = synthesize_inputs(handle.inputs, batch_size=8, seed=1)
    reference = forward(handle, x)
    names = ["encoder.0", "encoder.2", "head"]
    for method, ratio, tolerance in (("bnb_int8", 0.30, 0.03), ("bnb_nf4", 0.16, 0.2)):
        model = _bnb_replace(copy.deepcopy(handle.model), method, names, "cpu")
        swapped = handle.with_step(model, {"tool": "quantize", "method": method, "backend": "bitsandbytes"})
        assert type(model.head).__name__ == ("Linear8bitLt" if method == "bnb_int8" else "Linear4bit")
        assert serialized_size(swapped) <= ratio * serialized_size(handle)
        assert _rel_error(forward(swapped, x), reference) < tolerance


def test_onnxruntime_backend_for_torch_models() -> None:
    handle = mlp_handle()
    before = weights_snapshot(handle)
    x = synthesize_inputs(handle.inputs, batch_size=16, seed=1)
    q = quantize(handle, "dynamic_int8", backend="onnxruntime")
    assert q.runtime == "onnx" and q.recipe[-1]["result"]["exported_to_onnx"]
    assert q.recipe[-1]["result"]["backend"] == "onnxruntime" and q.recipe[-1]["backend"] == "onnxruntime"
    assert serialized_size(q) <= 0.30 * serialized_size(handle)
    assert _rel_error(forward(q, x), forward(handle, x)) < 0.05
    # The step's arguments replay to the same model.
    replay_args = {k: v for k, v in q.recipe[-1].items() if k not in ("tool", "method", "result")}
    again = quantize(handle, "dynamic_int8", **replay_args)
    np.testing.assert_array_equal(forward(again, x), forward(q, x))
    assert_same_weights(before, weights_snapshot(handle))
    with pytest.raises(UnsupportedFormatError, match="does not offer bf16"):
        quantize(handle, "bf16", backend="onnxruntime")
    with pytest.raises(UnsupportedFormatError, match="ONNX Runtime"):
        quantize(q, "fp16", backend="torch")


def test_calibration_data_must_match_the_signature() -> None:
    from tools.errors import DataMismatchError
    from tools.handle import EvalData

    handle = mlp_handle()
    handle.eval_data = EvalData(inputs={"obs": np.zeros((8, 65), np.float32)})
    with pytest.raises(DataMismatchError, match="axis 1 is 65"):
        quantize(handle, "static_int8")
