"""inspect_model: exact parameter counts, bytes at stored width, FLOPs that agree across runtimes."""

from __future__ import annotations

from tests.tools.conftest import (
    MLP_HIDDEN,
    MLP_IN,
    MLP_OUT,
    assert_same_weights,
    cnn_handle,
    mlp_handle,
    weights_snapshot,
)
from tools.exporting import serialized_size, to_onnx_model
from tools.handle import ModelHandle
from tools.profile import inspect_model
from tools.quantization import quantize

MLP_PARAMS = (
    MLP_IN * MLP_HIDDEN + MLP_HIDDEN + MLP_HIDDEN * MLP_HIDDEN + MLP_HIDDEN + MLP_HIDDEN * MLP_OUT + MLP_OUT
)
MLP_FLOPS = 2 * (MLP_IN * MLP_HIDDEN + MLP_HIDDEN * MLP_HIDDEN + MLP_HIDDEN * MLP_OUT)


def _onnx(handle: ModelHandle) -> ModelHandle:
    return handle.clone(model=to_onnx_model(handle), runtime="onnx", format="onnx")


def test_torch_mlp_profile() -> None:
    handle = mlp_handle()
    before = weights_snapshot(handle)
    profile = inspect_model(handle)
    assert profile.total_parameters == MLP_PARAMS
    assert profile.parameters_by_layer_type == {"Linear": MLP_PARAMS}
    assert profile.bytes_by_layer_type == {"Linear": 4 * MLP_PARAMS}
    assert profile.parameters_by_block == {"encoder": MLP_PARAMS - MLP_HIDDEN * MLP_OUT - MLP_OUT,
                                           "head": MLP_HIDDEN * MLP_OUT + MLP_OUT}  # fmt: skip
    assert profile.dtypes == {"float32": MLP_PARAMS}
    assert profile.flops == MLP_FLOPS
    assert profile.quantizable_layers == ["encoder.0", "encoder.2", "head"] == profile.prunable_layers
    assert profile.inputs[0].shape == [None, MLP_IN]
    assert profile.size_bytes == serialized_size(handle) and profile.zero_fraction == 0.0
    assert_same_weights(before, weights_snapshot(handle))


def test_onnx_profile_matches_torch() -> None:
    for handle in (mlp_handle(), cnn_handle()):
        torch_profile, onnx_profile = inspect_model(handle), inspect_model(_onnx(handle))
        assert onnx_profile.flops == torch_profile.flops > 0
        assert set(onnx_profile.parameters_by_block) == set(torch_profile.parameters_by_block)
        assert len(onnx_profile.quantizable_layers) == len(torch_profile.quantizable_layers)
    mlp = inspect_model(_onnx(mlp_handle()))
    assert mlp.total_parameters == MLP_PARAMS and mlp.parameters_by_layer_type == {"Gemm": MLP_PARAMS}


def test_quantized_weights_count_at_stored_width() -> None:
    handle = mlp_handle()
    for method, dtype in (("dynamic_int8", "qint8"), ("weight_only_int8", "int8"), ("fp16", "float16")):
        profile = inspect_model(quantize(handle, method))
        assert profile.total_parameters == MLP_PARAMS
        assert profile.dtypes == {dtype: MLP_PARAMS}
        expected = 2 if dtype == "float16" else 1
        assert expected * MLP_PARAMS <= profile.bytes_by_layer_type["Linear"] <= expected * MLP_PARAMS * 1.1
    onnx_int8 = inspect_model(quantize(_onnx(handle), "dynamic_int8"))
    assert onnx_int8.dtypes.get("int8", 0) >= MLP_PARAMS - 3 * MLP_HIDDEN
    assert onnx_int8.quantizable_layers == []


def test_zero_fraction_sees_pruned_weights() -> None:
    import torch

    handle = mlp_handle()
    with torch.no_grad():
        handle.model.encoder[2].weight[:, : MLP_HIDDEN // 2] = 0
    profile = inspect_model(handle)
    expected = (MLP_HIDDEN * MLP_HIDDEN // 2) / (
        MLP_IN * MLP_HIDDEN + MLP_HIDDEN * MLP_HIDDEN + MLP_HIDDEN * MLP_OUT
    )
    assert abs(profile.zero_fraction - expected) < 1e-6
    assert abs(inspect_model(_onnx(handle)).zero_fraction - expected) < 1e-6


def test_onnx_profile_names_the_structured_prunable_layers(tmp_path) -> None:
    """Only a transformer's FFN up-projections have channels structured pruning may remove."""
    from evals.zoo import export_zoo
    from tools.loading import load_model
    from tools.profile import inspect_model

    profile = inspect_model(load_model(export_zoo("bert", "onnx", tmp_path)))
    assert profile.structured_prunable_layers == [
        "encoder.encoder.layer.0.intermediate.dense",
        "encoder.encoder.layer.1.intermediate.dense",
    ]
    assert len(profile.prunable_layers) > len(profile.structured_prunable_layers)
