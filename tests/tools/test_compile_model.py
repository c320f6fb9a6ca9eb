"""compile_model on CPU (inductor): the compiled static-cache runtime gives the eager action tokens of a
small autoregressive VLA, records itself in the recipe, and refuses what it cannot compile with typed errors.

Inductor compiles slowly on a small CPU, so the runtime is compiled once for the module and called at
batch 1 (the deploy shape; one compiled prefill and one decode step serve all 100 inputs). The model is
the session test's tiny VLA (tests/api/test_sessions_runtime.py, TINY_VLA): inductor's graph cache serves
both; vla-mini's static-cache decode itself is checked uncompiled in test_decode_runtime.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tools.conftest import mlp_handle
from tests.tools.test_decode_runtime import SAMPLES, TINY_VLA
from tools import compile_model
from tools.architectures import build_model, canonical_ref, input_specs
from tools.decode_runtime import DecodeRuntime
from tools.errors import InvalidArgumentError, UnsupportedDeviceError, UnsupportedFormatError
from tools.handle import ArchitectureRef, ModelHandle
from tools.runtime import forward, synthesize_inputs


@pytest.fixture(scope="module")
def eager() -> ModelHandle:
    ref = canonical_ref(ArchitectureRef(name="vla", config=TINY_VLA))
    torch.manual_seed(0)
    return ModelHandle(
        runtime="torch", format="state_dict", model=build_model(ref).eval(), inputs=input_specs(ref),
        architecture=ref,
    )  # fmt: skip


@pytest.fixture(scope="module")
def compiled(eager: ModelHandle) -> ModelHandle:
    return compile_model(eager, device="cpu", mode="default")


def test_compiled_runtime_gives_the_eager_action_tokens_for_100_inputs(
    eager: ModelHandle, compiled: ModelHandle
) -> None:
    data = synthesize_inputs(eager.inputs, SAMPLES, seed=11)
    want = forward(eager, data).argmax(-1)
    got = np.concatenate(
        [forward(compiled, {k: v[i : i + 1] for k, v in data.items()}).argmax(-1) for i in range(SAMPLES)]
    )
    assert got.shape == (SAMPLES, 7)
    assert np.array_equal(got, want)


def test_step_records_the_runtime_and_the_input_is_untouched(
    eager: ModelHandle, compiled: ModelHandle
) -> None:
    assert isinstance(compiled.model, DecodeRuntime) and not isinstance(eager.model, DecodeRuntime)
    assert compiled.model.model is not eager.model
    step = compiled.recipe[-1]
    assert step["tool"] == "compile_model" and step["device"] == "cpu" and step["mode"] == "default"
    result = step["result"]
    assert result["runtime"] == "static_kv_cache" and result["decoding"] == "autoregressive"
    assert result["compiled"] is True and result["backend"] == "inductor" and result["cuda_graphs"] is False
    # The warm-up's seconds: near zero when this process compiled the same graph before (dynamo's cache).
    assert isinstance(result["compile_s"], float) and result["compile_s"] >= 0
    assert "load_runtime" in result["loader"]
    # Same weights: the state dict is the eager model's under `model.`.
    assert set(compiled.model.state_dict()) == {f"model.{k}" for k in eager.model.state_dict()}


def test_bad_input_gets_typed_errors(eager: ModelHandle) -> None:
    with pytest.raises(UnsupportedFormatError, match="decoder"):
        compile_model(mlp_handle(), device="cpu")
    with pytest.raises(InvalidArgumentError, match="mode"):
        compile_model(eager, device="cpu", mode="fastest")
    with pytest.raises(InvalidArgumentError, match="device"):
        compile_model(eager, device="tpu")
    onnx_model = pytest.importorskip("onnx").helper.make_model(
        pytest.importorskip("onnx").helper.make_graph([], "empty", [], [])
    )
    onnx_handle = ModelHandle(runtime="onnx", format="onnx", model=onnx_model, inputs=[])
    with pytest.raises(UnsupportedFormatError, match="ONNX"):
        compile_model(onnx_handle, device="cpu")
    traced = torch.jit.trace(mlp_handle().model, torch.zeros(1, 64))
    script = ModelHandle(runtime="torch", format="torchscript", model=traced, inputs=mlp_handle().inputs)
    with pytest.raises(UnsupportedFormatError, match="graph"):
        compile_model(script, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedDeviceError, match="CUDA"):
            compile_model(eager, device="cuda", mode="reduce-overhead")
    from tools import quantize

    with pytest.raises(UnsupportedFormatError, match="torchao"):
        compile_model(quantize(eager, "weight_only_int8"), device="cpu")


def test_gpu_weight_formats_are_typed_errors_on_cpu(eager: ModelHandle) -> None:
    from tools import quantize

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the formats run (scripts/gpu_check.py measures them)")
    for method in ("weight_only_int4", "fp8_weight_only", "fp8_dynamic", "bnb_nf4", "bnb_int8"):
        with pytest.raises(UnsupportedDeviceError, match="CUDA"):
            quantize(eager, method)


def test_saved_version_is_the_runtime_pt2_its_loader_runs(
    eager: ModelHandle, compiled: ModelHandle, tmp_path: Path
) -> None:
    """What a session stores for a compiled version: a .pt2 of the static-cache decode (TorchScript cannot
    hold it, said so in artifact.json), which tools.decode_runtime.load_runtime runs. On the session test's
    small VLA (torch.export traces every decode step: kept small)."""
    from agents.workspace import Workspace
    from tools.decode_runtime import load_runtime

    # The module's compiled runtime (the session test's model, tests/api/test_sessions_runtime.py).
    workspace = Workspace(original=eager, artifacts_dir=tmp_path)
    path, fmt = workspace.save("v1", compiled)
    assert fmt == "pt2" and path is not None and path.endswith("model.pt2")
    info = json.loads((tmp_path / "v1" / "artifact.json").read_text())
    assert "torch.export.load" in info["runtime"]
    runtime = load_runtime(path, mode=None)
    data = synthesize_inputs(eager.inputs, 6, seed=13)
    tensors = [torch.from_numpy(data[s.name]) for s in eager.inputs]
    with torch.inference_mode():
        assert torch.equal(runtime(*tensors).argmax(-1), eager.model(*tensors).argmax(-1))
