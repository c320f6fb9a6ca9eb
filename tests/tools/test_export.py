"""export: every format loads back with load_model and reproduces the outputs; ONNX runs in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.tools.conftest import POLICY_REF, assert_same_weights, mlp_handle, weights_snapshot
from tools.errors import InvalidArgumentError, UnsupportedFormatError
from tools.export import export, serialized_size, to_onnx_model
from tools.loading import load_model
from tools.quantize import quantize
from tools.runtime import forward, synthesize_inputs


def test_onnx_export_runs_in_onnxruntime(tmp_path: Path) -> None:
    handle = mlp_handle()
    before = weights_snapshot(handle)
    path = export(handle, "onnx", tmp_path / "mlp.onnx")
    x = synthesize_inputs(handle.inputs, batch_size=5, seed=3)  # exported with batch 2: the axis is dynamic
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, x)
    np.testing.assert_allclose(out, forward(handle, x), rtol=1e-4, atol=1e-5)
    loaded = load_model(path)
    assert loaded.inputs[0].name == "obs" and loaded.inputs[0].shape == [None, 64]
    np.testing.assert_allclose(forward(loaded, x), forward(handle, x), rtol=1e-4, atol=1e-5)
    assert serialized_size(loaded) == path.stat().st_size  # metadata included once loaded
    assert_same_weights(before, weights_snapshot(handle))


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_torch_formats_round_trip(tmp_path: Path, fmt: str) -> None:
    handle = mlp_handle()
    path = export(handle, fmt, tmp_path / f"mlp.{'pt' if fmt == 'torchscript' else 'pt2'}")
    loaded = load_model(path)  # the signature travels with the file
    assert loaded.format == fmt and [s.model_dump() for s in loaded.inputs][0]["name"] == "obs"
    x = synthesize_inputs(loaded.inputs, batch_size=7, seed=4)
    np.testing.assert_allclose(forward(loaded, x), forward(handle, x), rtol=1e-5, atol=1e-6)


def test_safetensors_round_trip_with_architecture(tmp_path: Path, policy_files: dict[str, Path]) -> None:
    handle = load_model(policy_files["pt"], architecture=POLICY_REF)
    path = export(handle, "safetensors", tmp_path / "policy.safetensors")
    loaded = load_model(path, architecture=handle.architecture)
    x = synthesize_inputs(handle.inputs, batch_size=3)
    np.testing.assert_array_equal(forward(loaded, x), forward(handle, x))


def test_quantized_onnx_and_fp16_export(tmp_path: Path) -> None:
    handle = mlp_handle()
    q = quantize(handle.clone(model=to_onnx_model(handle), runtime="onnx", format="onnx"), "dynamic_int8")
    path = export(q, "onnx", tmp_path / "q.onnx")
    # The file adds the signature metadata (a few hundred bytes) to the graph.
    assert abs(path.stat().st_size - serialized_size(q)) < 4096
    assert path.stat().st_size <= 0.3 * serialized_size(handle)
    x = synthesize_inputs(handle.inputs, batch_size=4)
    np.testing.assert_allclose(forward(load_model(path), x), forward(q, x), rtol=1e-5, atol=1e-6)
    half = quantize(handle, "fp16")
    loaded = load_model(export(half, "pt2", tmp_path / "half.pt2"))
    assert loaded.inputs[0].dtype == "float16"
    np.testing.assert_allclose(forward(loaded, x), forward(half, x), rtol=1e-3, atol=1e-4)


def test_torch_ao_int8_exports_to_torchscript(tmp_path: Path) -> None:
    q = quantize(mlp_handle(), "dynamic_int8")
    path = export(q, "torchscript", tmp_path / "q.pt")
    loaded = load_model(path)
    x = synthesize_inputs(q.inputs, batch_size=3)
    np.testing.assert_allclose(forward(loaded, x), forward(q, x), rtol=1e-5, atol=1e-6)
    assert path.stat().st_size < 0.4 * serialized_size(mlp_handle())


def test_export_refusals(tmp_path: Path) -> None:
    handle = mlp_handle()
    with pytest.raises(InvalidArgumentError, match="unknown export format"):
        export(handle, "tflite", tmp_path / "m.tflite")
    q = quantize(handle, "dynamic_int8")
    with pytest.raises(UnsupportedFormatError, match="cannot be exported to ONNX"):
        export(q, "onnx", tmp_path / "q.onnx")
    with pytest.raises(UnsupportedFormatError, match="safetensors"):
        export(q, "safetensors", tmp_path / "q.safetensors")
    onnx_handle = handle.clone(model=to_onnx_model(handle), runtime="onnx", format="onnx")
    with pytest.raises(UnsupportedFormatError, match="only be exported as onnx"):
        export(onnx_handle, "torchscript", tmp_path / "m.pt")


def test_integer_input_ranges_survive_export(tmp_path: Path) -> None:
    """Token-id inputs keep their [low, high) range through ONNX and pt2 files (ONNX cannot state it)."""
    import torch

    from tools.handle import InputSpec, ModelHandle

    class Embedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(50, 8)
            self.head = torch.nn.Linear(8, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(ids).mean(1))

    torch.manual_seed(0)
    spec = InputSpec(name="ids", shape=[None, 6], dtype="int64", low=0, high=50)
    handle = ModelHandle(runtime="torch", format="state_dict", model=Embedder().eval(), inputs=[spec])
    for fmt, name in (("onnx", "e.onnx"), ("pt2", "e.pt2"), ("torchscript", "e.pt")):
        loaded = load_model(export(handle, fmt, tmp_path / name))
        spec = loaded.inputs[0]
        assert (spec.dtype, spec.low, spec.high) == ("int64", 0, 50), fmt
        x = synthesize_inputs(loaded.inputs, batch_size=3)
        np.testing.assert_allclose(forward(loaded, x), forward(handle, x), rtol=1e-5, atol=1e-6)
