"""load_model: every accepted format loads, runs, and yields the same outputs as the source model."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tools.conftest import MLP_IN, POLICY_REF, build_mlp
from tools.errors import (
    DataMismatchError,
    InvalidArgumentError,
    InvalidModelError,
    UnsafeModelError,
    UnsupportedFormatError,
)
from tools.handle import EvalData, InputSpec
from tools.loading import load_model, require_inputs
from tools.runtime import forward, synthesize_inputs


def _reference(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return build_mlp()(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(
    ("key", "runtime", "fmt"),
    [("mlp_onnx", "onnx", "onnx"), ("mlp_pt2", "torch", "pt2")],
)
def test_self_describing_formats(model_files: dict[str, Path], key: str, runtime: str, fmt: str) -> None:
    handle = load_model(model_files[key])
    assert handle.runtime == runtime and handle.format == fmt
    assert len(handle.inputs) == 1 and handle.inputs[0].shape == [None, MLP_IN]
    x = synthesize_inputs(handle.inputs, batch_size=5)
    (arr,) = x.values()
    np.testing.assert_allclose(forward(handle, x), _reference(arr), rtol=1e-4, atol=1e-5)
    assert handle.metadata["size_bytes"] == model_files[key].stat().st_size


def test_torchscript_signature_from_its_graph(model_files: dict[str, Path]) -> None:
    """A traced TorchScript file states no shapes: the first Linear's weight tells the feature size."""
    handle = load_model(model_files["mlp_torchscript"])
    assert handle.format == "torchscript" and handle.metadata["signature_source"] == "graph"
    assert [(s.name, s.shape, s.dtype) for s in require_inputs(handle)] == [("x", [None, MLP_IN], "float32")]
    x = synthesize_inputs(handle.inputs, batch_size=3)
    np.testing.assert_allclose(forward(handle, x), _reference(x["x"]), rtol=1e-5, atol=1e-6)
    # A given signature completes or overrides it (a single input keeps the user's name) ...
    specs = [InputSpec(name="obs", shape=[None, MLP_IN])]
    handle = load_model(model_files["mlp_torchscript"], inputs=specs)
    assert handle.metadata["signature_source"] == "given" and handle.inputs[0].name == "obs"
    x = synthesize_inputs(require_inputs(handle), batch_size=3)
    np.testing.assert_allclose(forward(handle, x), _reference(x["obs"]), rtol=1e-5, atol=1e-6)
    # ... but may not contradict the graph.
    with pytest.raises(
        DataMismatchError, match="axis 1: input_signature gives 32, the model's graph fixes 64"
    ):
        load_model(model_files["mlp_torchscript"], inputs=[InputSpec(name="x", shape=[None, 32])])
    with pytest.raises(DataMismatchError, match="rank 3"):
        load_model(model_files["mlp_torchscript"], inputs=[InputSpec(name="x", shape=[None, 4, MLP_IN])])
    with pytest.raises(InvalidArgumentError, match="dtype 'float8' is not one of"):
        load_model(
            model_files["mlp_torchscript"], inputs=[{"name": "x", "shape": [None, 64], "dtype": "float8"}]
        )


def test_signature_not_in_the_graph_is_named_missing(tmp_path: Path) -> None:
    """An input nothing in the graph sizes (it goes straight into a reshape) is named, not guessed;
    traced, the same module states its example's shape."""

    class Reshaper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(12, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(x.shape[0], -1))

    path = tmp_path / "reshaper.pt"
    # Scripted, not traced: no example inputs are stored with it.
    torch.jit.save(torch.jit.script(Reshaper().eval()), path)
    handle = load_model(path)
    assert handle.inputs == [] and handle.metadata["input_names"] == ["x"]
    assert "'x'" in handle.metadata["signature_missing"][0]
    with pytest.raises(InvalidArgumentError, match="input signature is incomplete"):
        require_inputs(handle)
    handle = load_model(path, inputs=[InputSpec(name="x", shape=[None, 3, 4])])
    assert forward(handle, synthesize_inputs(handle.inputs, batch_size=2)).shape == (2, 2)
    torch.jit.save(torch.jit.trace(Reshaper().eval(), torch.randn(5, 3, 4)), path)
    handle = load_model(path)
    assert [(s.name, s.shape, s.dtype) for s in handle.inputs] == [("x", [None, 3, 4], "float32")]
    assert "traced with" in handle.metadata["signature_notes"][0]


def test_signature_value_ranges_from_the_graph(tmp_path: Path) -> None:
    """Token ids index an embedding table: synthesized ids stay below its row count, in every format."""

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(300, 16)
            self.fc = torch.nn.Linear(16, 4)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            h = self.emb(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
            return self.fc(h.mean(1))

    model = Encoder().eval()
    ids, mask = torch.randint(0, 300, (2, 8)), torch.ones(2, 8, dtype=torch.int64)
    torch.jit.save(torch.jit.trace(model, (ids, mask)), tmp_path / "enc.pt")
    torch.export.save(torch.export.export(model, (ids, mask)), tmp_path / "enc.pt2")
    torch.onnx.export(
        model, (ids, mask), tmp_path / "enc.onnx", input_names=["input_ids", "attention_mask"], dynamo=False
    )
    for name in ("enc.pt", "enc.pt2", "enc.onnx"):
        specs = {s.name: s for s in load_model(tmp_path / name).inputs}
        assert (specs["input_ids"].dtype, specs["input_ids"].low, specs["input_ids"].high) == (
            "int64",
            0,
            300,
        )
        assert (specs["attention_mask"].low, specs["attention_mask"].high) == (1, 2), name
        x = synthesize_inputs(list(specs.values()), batch_size=4)
        assert x["input_ids"].max() < 300 and (x["attention_mask"] == 1).all()


def test_signature_from_eval_data(model_files: dict[str, Path]) -> None:
    handle = load_model(model_files["mlp_torchscript"], eval_data=model_files["mlp_eval_npz"])
    assert handle.inputs[0].name == "obs" and handle.inputs[0].shape == [None, MLP_IN]
    assert handle.eval_data is not None and handle.eval_data.num_samples == 32


@pytest.mark.parametrize("key", ["pt", "safetensors", "fp16"])
def test_state_dicts_of_a_registered_architecture(policy_files: dict[str, Path], key: str) -> None:
    handle = load_model(policy_files[key], architecture=POLICY_REF)
    assert handle.runtime == "torch" and handle.architecture is not None
    assert handle.architecture.name == "mlp_policy" and handle.inputs[0].name == "obs"
    weight = handle.model.body[0].weight
    stored = torch.load(policy_files[key], weights_only=True) if key != "safetensors" else None
    assert weight.dtype == (torch.float16 if key == "fp16" else torch.float32)
    if stored is not None:
        torch.testing.assert_close(weight, stored["body.0.weight"])
    out = forward(handle, synthesize_inputs(handle.inputs, batch_size=2))
    assert out.shape == (2, 16) and np.isfinite(out).all()


def test_state_dict_errors(policy_files: dict[str, Path]) -> None:
    with pytest.raises(InvalidArgumentError, match="architecture"):
        load_model(policy_files["pt"])
    wrong = {"name": "mlp_policy", "config": {"obs_dim": 10, "act_dim": 16, "hidden": [512]}}
    with pytest.raises(InvalidModelError, match="do not fit architecture 'mlp_policy'.*body.0.weight"):
        load_model(policy_files["pt"], architecture=wrong)
    with pytest.raises(InvalidArgumentError, match="unknown architecture"):
        load_model(policy_files["pt"], architecture={"name": "nope"})


def test_eval_data_must_match_signature(model_files: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, obs=np.zeros((4, MLP_IN + 1), np.float32))
    with pytest.raises(DataMismatchError, match="axis 1"):
        load_model(model_files["mlp_onnx"], eval_data=bad)
    renamed = EvalData(inputs={"state": np.zeros((4, MLP_IN), np.float32)})
    with pytest.raises(DataMismatchError, match="names"):
        load_model(model_files["mlp_onnx"], eval_data=renamed)


def test_tensorflow_and_keras_refused_with_conversion(tmp_path: Path) -> None:
    for ext, tool in ((".pb", "tf2onnx"), (".h5", "keras2onnx")):
        path = tmp_path / f"m{ext}"
        path.write_bytes(b"\x0a\x01x")
        with pytest.raises(UnsupportedFormatError, match=tool):
            load_model(path)


def test_unsafe_file_never_loads(tmp_path: Path) -> None:
    import os
    import pickle

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "p": Payload()}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(UnsafeModelError):
        load_model(path, architecture=POLICY_REF)
    assert not (tmp_path / "ran").exists()


def test_public_api_names() -> None:
    import tools
    import tools.benchmarking  # noqa: F401 - a submodule import must not shadow the function
    import tools.quantization  # noqa: F401
    from tools import benchmark, evaluate, export, inspect_model, load_model, prune, quantize  # noqa: F401

    assert tools.load_model is load_model and callable(tools.ModelHandle)
    for fn in (benchmark, evaluate, export, inspect_model, load_model, prune, quantize):
        assert isinstance(fn, types.FunctionType), fn
    assert issubclass(tools.UnsafeModelError, tools.ToolError)
    with pytest.raises(AttributeError):
        _ = tools.not_a_tool


def test_image_size_probed_when_the_file_does_not_state_it(tmp_path: Path) -> None:
    """A scripted CNN states its channels (the first conv) but no image size: the first usual size the
    model accepts is taken, and the notes say so."""

    class Cnn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
            self.head = torch.nn.Linear(4 * 15 * 15, 2)  # only 32x32 images fit this head

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(pixel_values).flatten(1))

    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.script(Cnn().eval()), path)
    handle = load_model(path)
    (spec,) = handle.inputs
    assert (spec.shape, spec.low, spec.high) == ([None, 3, 32, 32], 0.0, 1.0)
    assert "spatial size 32" in handle.metadata["signature_notes"][0]
