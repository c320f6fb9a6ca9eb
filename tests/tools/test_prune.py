"""Pruning really removes weights: zeros for magnitude, fewer parameters for structured; typed errors."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.tools.conftest import assert_same_weights, cnn_handle, mlp_handle, weights_snapshot
from tools.architectures import build_model, input_specs
from tools.errors import (
    InvalidArgumentError,
    UnknownMethodError,
    UnsupportedDeviceError,
    UnsupportedFormatError,
)
from tools.handle import ArchitectureRef, ModelHandle
from tools.pruning import prune, sparsity_of
from tools.runtime import forward, synthesize_inputs


def _params(handle: ModelHandle) -> int:
    return sum(p.numel() for p in handle.model.parameters())


def _registry_handle(name: str) -> ModelHandle:
    ref = ArchitectureRef(name=name)
    return ModelHandle(
        runtime="torch",
        format="state_dict",
        model=build_model(ref),
        inputs=input_specs(ref),
        architecture=ref,
    )


@pytest.mark.parametrize("scope", ["global", "per_layer"])
def test_magnitude_half_leaves_half_zeros_and_input_untouched(scope: str) -> None:
    handle = mlp_handle()
    before = weights_snapshot(handle)
    pruned = prune(handle, "magnitude", 0.5, scope=scope)
    weights = [m.weight for m in pruned.model.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros >= 0.49
    if scope == "per_layer":
        assert all(float((w == 0).float().mean()) >= 0.49 for w in weights)
    # Permanent: plain parameters, no re-parametrisation hooks left behind.
    assert not any(k.endswith("_orig") or k.endswith("_mask") for k in pruned.model.state_dict())
    assert sparsity_of(handle) < 0.01
    assert_same_weights(before, weights_snapshot(handle))
    assert handle.recipe == [] and pruned.recipe[-1]["method"] == "magnitude"
    assert pruned.recipe[-1]["result"]["sparsity"] >= 0.49


def test_magnitude_include_exclude_select_layers() -> None:
    handle = mlp_handle()
    pruned = prune(handle, "magnitude", 0.5, exclude=["head"])
    assert float((pruned.model.head.weight == 0).float().mean()) == 0.0
    assert float((pruned.model.encoder[2].weight == 0).float().mean()) > 0.3
    only = prune(handle, "magnitude", 0.5, include=["encoder.0"])
    assert float((only.model.encoder[0].weight == 0).float().mean()) >= 0.49
    assert float((only.model.encoder[2].weight == 0).float().mean()) == 0.0
    with pytest.raises(InvalidArgumentError, match="match"):
        prune(handle, "magnitude", 0.5, include=["no_such_layer*"])


def test_magnitude_on_onnx_initializers(model_files: dict[str, Path]) -> None:
    proto = onnx.load(str(model_files["mlp_onnx"]))
    handle = ModelHandle(runtime="onnx", format="onnx", model=proto, inputs=mlp_handle().inputs)
    before = weights_snapshot(handle)
    pruned = prune(handle, "magnitude", 0.5, scope="per_layer")
    assert pruned.recipe[-1]["result"]["pruned_layers"] == 3
    assert sparsity_of(pruned, pruned.recipe[-1]["result"]["layer_sparsity"]) >= 0.49
    assert_same_weights(before, weights_snapshot(handle))
    x = synthesize_inputs(handle.inputs, 4)
    out = forward(pruned, x)
    assert out.shape == (4, 16) and not np.allclose(out, forward(handle, x))


def test_magnitude_on_torchscript() -> None:
    eager = mlp_handle()
    script = torch.jit.trace(eager.model, torch.randn(2, 64))
    handle = ModelHandle(runtime="torch", format="torchscript", model=script, inputs=eager.inputs)
    pruned = prune(handle, "magnitude", 0.5)
    assert sparsity_of(pruned) >= 0.49 and sparsity_of(handle) < 0.01


def test_structured_half_removes_40_percent_runs_and_exports(tmp_path: Path) -> None:
    handle = mlp_handle()
    before = weights_snapshot(handle)
    pruned = prune(handle, "structured", 0.5)
    assert _params(pruned) <= 0.6 * _params(handle)
    assert pruned.model.head.out_features == 16 and pruned.model.encoder[0].in_features == 64
    assert_same_weights(before, weights_snapshot(handle))
    x = synthesize_inputs(handle.inputs, 3)
    expected = forward(pruned, x)
    assert expected.shape == (3, 16)
    from tools.exporting import export
    from tools.loading import load_model

    # Our own export and load_model, with a batch size other than the one traced (the axis stays dynamic).
    x5 = synthesize_inputs(handle.inputs, 5, seed=7)
    expected5 = forward(pruned, x5)
    path = export(pruned, "onnx", tmp_path / "pruned.onnx")
    loaded = load_model(path)
    assert loaded.runtime == "onnx" and loaded.inputs[0].name == "obs"
    np.testing.assert_allclose(forward(loaded, x), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(forward(loaded, x5), expected5, rtol=1e-4, atol=1e-5)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x5)[0]
    np.testing.assert_allclose(got, expected5, rtol=1e-4, atol=1e-5)
    assert path.stat().st_size < 0.7 * 4 * _params(handle)
    for fmt, name in (("torchscript", "pruned.pt"), ("pt2", "pruned.pt2")):
        again = load_model(export(pruned, fmt, tmp_path / name))
        np.testing.assert_allclose(forward(again, x5), expected5, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scope", ["global", "per_layer"])
def test_structured_cnn_and_registry_models(scope: str) -> None:
    for handle in (cnn_handle(), _registry_handle("cnn_classifier"), _registry_handle("mlp_policy")):
        pruned = prune(handle, "structured", 0.5, scope=scope)
        assert _params(pruned) <= 0.6 * _params(handle)
        x = synthesize_inputs(handle.inputs, 2)
        assert forward(pruned, x).shape == forward(handle, x).shape


def test_structured_vla_prunes_heads_and_mlp_widths(tmp_path: Path) -> None:
    handle = _registry_handle_with("vla", preset="vla_mini", llm_layers=2)
    before = weights_snapshot(handle)
    pruned = prune(handle, "structured", 0.5)
    result = pruned.recipe[-1]["result"]
    assert result["heads_removed"] > 0
    assert _params(pruned) <= 0.6 * _params(handle)
    layer = pruned.model.layers[0]
    assert layer.self_attn.num_heads == 2 and layer.self_attn.q_proj.out_features == 64
    assert layer.mlp.gate_proj.out_features == layer.mlp.down_proj.in_features < 344
    assert pruned.model.lm_head.out_features == 512  # the action head is never pruned
    assert_same_weights(before, weights_snapshot(handle))
    x = synthesize_inputs(handle.inputs, 2)
    out = forward(pruned, x)
    assert out.shape == (2, 7, 256)
    from tools.exporting import export
    from tools.loading import load_model

    # TorchScript and weights-only round trips (the recorded widths rebuild the pruned shapes).
    for fmt, name in (("torchscript", "vla.pt"), ("safetensors", "vla.safetensors")):
        path = export(pruned, fmt, tmp_path / name)
        again = load_model(path, architecture=pruned.architecture if fmt == "safetensors" else None)
        np.testing.assert_allclose(forward(again, x), out, rtol=1e-4, atol=1e-5)


def test_bad_arguments_raise_typed_errors(model_files: dict[str, Path]) -> None:
    handle = mlp_handle()
    with pytest.raises(UnknownMethodError, match="unknown pruning method"):
        prune(handle, "random_forest", 0.5)
    for amount in (0, 1, 1.5, -0.1, True):
        with pytest.raises(InvalidArgumentError, match="between 0 and 1"):
            prune(handle, "magnitude", amount)
    with pytest.raises(InvalidArgumentError, match="scope"):
        prune(handle, "magnitude", 0.5, scope="everywhere")  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedDeviceError, match="CUDA"):
            prune(handle, "semi_structured_2_4", 0.5)
    proto = onnx.load(str(model_files["mlp_onnx"]))
    onnx_handle = ModelHandle(runtime="onnx", format="onnx", model=proto, inputs=handle.inputs)
    with pytest.raises(UnsupportedFormatError):
        prune(onnx_handle, "semi_structured_2_4", 0.5)


def test_structured_registry_model_exports_and_loads_back(tmp_path: Path) -> None:
    from tools.exporting import export
    from tools.loading import load_model

    handle = _registry_handle_with("cnn_classifier", batch_norm=True)
    pruned = prune(handle, "structured", 0.5)
    assert pruned.architecture is not None and pruned.architecture.config["resized"]
    x = synthesize_inputs(handle.inputs, 2, seed=4)
    expected = forward(pruned, x)
    # Weights only: the recorded widths rebuild the pruned shapes.
    path = export(pruned, "safetensors", tmp_path / "pruned.safetensors")
    again = load_model(path, architecture=pruned.architecture)
    assert sum(p.numel() for p in again.model.parameters()) == _params(pruned)
    np.testing.assert_allclose(forward(again, x), expected, rtol=1e-5, atol=1e-5)
    onnx_path = export(pruned, "onnx", tmp_path / "pruned.onnx")
    np.testing.assert_allclose(forward(load_model(onnx_path), x), expected, rtol=1e-4, atol=1e-4)


def _registry_handle_with(name: str, **config: object) -> ModelHandle:
    ref = ArchitectureRef(name=name, config=dict(config))
    return ModelHandle(
        runtime="torch",
        format="state_dict",
        model=build_model(ref),
        inputs=input_specs(ref),
        architecture=ref,
    )


def test_quantized_and_exported_programs(tmp_path: Path) -> None:
    from tests.tools.conftest import build_mlp
    from tools.loading import load_model
    from tools.quantization import quantize

    torchao_int8 = quantize(mlp_handle(), "weight_only_int8")
    for method in ("magnitude", "structured"):
        with pytest.raises(UnsupportedFormatError, match="already quantized"):
            prune(torchao_int8, method, 0.5)
    dynamic = quantize(mlp_handle(), "dynamic_int8")  # an ONNX graph or torch.ao modules
    with pytest.raises(UnsupportedFormatError, match="already quantized"):
        prune(dynamic, "magnitude", 0.5)
    program = torch.export.export(build_mlp(), (torch.randn(2, 64),))
    torch.export.save(program, tmp_path / "mlp.pt2")
    exported = load_model(tmp_path / "mlp.pt2")
    pruned = prune(exported, "magnitude", 0.5)
    assert sparsity_of(pruned) >= 0.49 and sparsity_of(exported) < 0.01
    # Structured pruning reaches the program's lifted layers (it used to be refused for .pt2).
    thinner = prune(exported, "structured", 0.5)
    result = thinner.recipe[-1]["result"]
    assert result["engine"] == "graph_width_groups" and result["params_after"] < 0.7 * result["params_before"]
    x = synthesize_inputs(exported.inputs, 2)
    assert forward(thinner, x).shape == forward(exported, x).shape


def test_two_four_mask_keeps_the_two_largest_of_every_four() -> None:
    from tools.pruning import _two_four_mask

    w = torch.randn(64, 128)
    mask = _two_four_mask(w)
    groups = mask.reshape(64, 32, 4)
    assert torch.all(groups.sum(-1) == 2)
    a = w.abs().reshape(64, 32, 4)
    kept_min = torch.where(groups.bool(), a, torch.inf).min(-1).values
    dropped_max = torch.where(groups.bool(), -torch.inf, a).max(-1).values
    assert torch.all(kept_min >= dropped_max)


def test_magnitude_large_model_path_masks_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    prune_module = importlib.import_module("tools.pruning")

    # The in-place path billion-weight models take, forced on the small MLP (sampled global threshold).
    monkeypatch.setattr(prune_module, "_LARGE_MODEL_WEIGHTS", 1000)
    monkeypatch.setattr(prune_module, "_THRESHOLD_SAMPLE", 20_000)
    handle = mlp_handle()
    for scope in ("global", "per_layer"):
        pruned = prune(handle, "magnitude", 0.5, scope=scope)
        assert 0.47 <= pruned.recipe[-1]["result"]["sparsity"] <= 0.53
        if scope == "per_layer":
            assert all(s >= 0.49 for s in pruned.recipe[-1]["result"]["layer_sparsity"].values())
    assert sparsity_of(handle) < 0.01


@pytest.mark.parametrize("name", ["bert", "llama", "vit"])
def test_structured_on_hugging_face_directories_keeps_attention_whole(name: str, tmp_path: Path) -> None:
    """A transformers model loaded from its directory: MLP widths shrink, attention stays, it still runs."""
    import transformers

    from evals.zoo import build
    from tools.loading import load_model

    zoo = build(name)
    getattr(transformers, zoo.hf_class)(zoo.config).save_pretrained(tmp_path)
    handle = load_model(tmp_path)
    before = _params(handle)
    pruned = prune(handle, method="structured", amount=0.5)
    result = pruned.recipe[-1]["result"]
    assert result["engine"] == "width_groups" and result["heads_removed"] == 0
    assert _params(pruned) < before and _params(handle) == before
    inputs = synthesize_inputs(handle.inputs, 2, seed=0)
    original, smaller = forward(handle, inputs), forward(pruned, inputs)
    assert original.shape == smaller.shape and np.isfinite(smaller).all()
