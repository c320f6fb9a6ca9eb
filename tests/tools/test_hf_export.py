"""Optimized transformers models written as the directory `from_pretrained` loads, and as ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel, ViTConfig, ViTModel

from agents.workspace import ARTIFACT_INFO, Workspace
from tools import evaluate, export, load_model, quantize
from tools.errors import UnsupportedFormatError
from tools.exporting import export_hf_directory, onnx_data_file
from tools.handle import ModelHandle
from tools.model_dirs import transformers_model
from tools.runtime import synthesize_inputs

FLOOR = 0.95  # balanced_optimization's floor on accuracy retained


def _bert(directory: Path) -> Path:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)
    (directory / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")  # a tokenizer file rides along
    return directory


def _vit(directory: Path) -> Path:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    ViTModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelHandle]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "bert": load_model(_bert(root / "bert")),
        "vit": load_model(_vit(root / "vit")),
    }


def _inputs(handle: ModelHandle) -> dict[str, torch.Tensor]:
    data = synthesize_inputs(handle.inputs, batch_size=4, seed=1)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}


@pytest.mark.parametrize("name", ["bert", "vit"])
@pytest.mark.parametrize("method", ["fp16", "weight_only_int8"])
def test_export_loads_with_from_pretrained_and_keeps_the_floor(
    models: dict[str, ModelHandle], name: str, method: str, tmp_path: Path
) -> None:
    original = models[name]
    version = quantize(original, method)
    info = export_hf_directory(version, tmp_path / "out")

    reloaded = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert type(reloaded).__name__ == type(transformers_model(original.model)).__name__
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    query = next(m for n, m in reloaded.named_modules() if n.endswith((".query", ".q_proj"))).weight
    if method == "fp16":
        assert reloaded.dtype == torch.float16 and query.dtype == torch.float16
        assert "quantization_config" not in config
        assert info["runtime"].startswith("transformers>=") and "torchao" not in info["runtime"]
    else:
        assert type(query).__name__ == "Int8Tensor"  # the int8 weights themselves, not a dequantized copy
        assert config["quantization_config"]["quant_method"] == "torchao"
        assert "with torchao>=" in info["runtime"]
    if name == "bert":
        assert (tmp_path / "out" / "vocab.txt").read_text().startswith("[PAD]")

    # The library's own loader gives the version's outputs ...
    inputs = _inputs(original)
    dtype = reloaded.dtype
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.inference_mode():
        got = reloaded(**cast).last_hidden_state.float()
        want = version.model(*[cast[s.name] for s in version.inputs])["last_hidden_state"].float()
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    # ... and meet the session's floor against the original, by the project's metric.
    result = evaluate(load_model(tmp_path / "out"), reference=original, num_samples=32)
    assert result.accuracy_retained >= FLOOR, result


def test_bf16_is_kept(models: dict[str, ModelHandle], tmp_path: Path) -> None:
    info = export_hf_directory(quantize(models["bert"], "bf16"), tmp_path / "out")
    assert info["dtype"] == "bfloat16"
    assert AutoModel.from_pretrained(tmp_path / "out").dtype == torch.bfloat16


def test_torch_ao_dynamic_int8_has_no_directory_form(models: dict[str, ModelHandle], tmp_path: Path) -> None:
    version = quantize(models["bert"], "dynamic_int8")  # torch.ao's layers on CPU
    with pytest.raises(UnsupportedFormatError, match="torch.ao"):
        export_hf_directory(version, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_partial_half_precision_is_refused(models: dict[str, ModelHandle], tmp_path: Path) -> None:
    version = quantize(models["bert"], "fp16", exclude=["*pooler*"])
    with pytest.raises(UnsupportedFormatError, match="float32 behind casts"):
        export_hf_directory(version, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_directory_that_would_not_load_back_is_never_left(
    models: dict[str, ModelHandle], tmp_path: Path
) -> None:
    version = models["bert"].clone()
    transformers_model(version.model).config.intermediate_size = 80  # the weights are 64 wide
    with pytest.raises(UnsupportedFormatError, match="does not load back"):
        export_hf_directory(version, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_a_transformers_model_is_refused(tmp_path: Path) -> None:
    from tools.architectures import build_model
    from tools.handle import ArchitectureRef, InputSpec

    handle = ModelHandle(
        runtime="torch",
        format="safetensors",
        model=build_model("mlp_policy"),
        inputs=[InputSpec(name="obs", shape=[None, 17])],
        architecture=ArchitectureRef(name="mlp_policy"),
    )
    with pytest.raises(UnsupportedFormatError, match="only a Hugging Face transformers model"):
        export_hf_directory(handle, tmp_path / "out")


def test_onnx_above_the_single_file_limit_uses_external_data(
    models: dict[str, ModelHandle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tools.exporting

    monkeypatch.setattr(tools.exporting, "ONNX_SINGLE_FILE_LIMIT", 10_000)  # stands in for 2 GiB
    handle = models["vit"]
    path = export(handle, "onnx", tmp_path / "model.onnx")
    data = onnx_data_file(path)
    assert data.is_file() and data.stat().st_size > path.stat().st_size
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = _inputs(handle)
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    with torch.inference_mode():
        want = handle.model(*inputs.values())
    np.testing.assert_allclose(got[0], want["last_hidden_state"].numpy(), rtol=1e-4, atol=1e-4)


def test_workspace_saves_the_directory_and_its_onnx_form(
    models: dict[str, ModelHandle], tmp_path: Path
) -> None:
    original = models["bert"]
    workspace = Workspace(original=original, artifacts_dir=tmp_path)
    path, fmt = workspace.save("v1", quantize(original, "fp16"))
    assert fmt == "hf_directory" and Path(path).name == "model"
    info = json.loads((tmp_path / "v1" / ARTIFACT_INFO).read_text())
    assert not info["converted"] and info["downloads"]["hf_directory"]["dtype"] == "float16"
    assert AutoModel.from_pretrained(path).dtype == torch.float16
    # torch's exporter gives this fp16 BERT a LayerNormalization ONNX Runtime refuses: no ONNX form then
    assert "onnx" not in info and "ONNXRuntimeError" in info["onnx_unavailable"]
    assert not (tmp_path / "v1" / "onnx").exists()

    path, fmt = workspace.save("v0", original.clone())  # a float version: its ONNX form runs
    info = json.loads((tmp_path / "v0" / ARTIFACT_INFO).read_text())
    assert fmt == "hf_directory" and info["downloads"]["hf_directory"]["dtype"] == "float32"
    assert info["onnx"]["path"] == "onnx/model.onnx" and info["onnx"]["runtime"].startswith("onnxruntime")
    assert info["onnx"]["external_data"] is None
    ort.InferenceSession(str(tmp_path / "v0" / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])


def test_workspace_says_why_a_version_is_not_a_directory(
    models: dict[str, ModelHandle], tmp_path: Path
) -> None:
    original = models["bert"]
    workspace = Workspace(original=original, artifacts_dir=tmp_path)
    path, fmt = workspace.save("v2", quantize(original, "dynamic_int8"))
    assert fmt == "torchscript"
    info = json.loads((tmp_path / "v2" / ARTIFACT_INFO).read_text())
    assert info["converted"] and "torch.ao" in info["note"] and info["runtime"].startswith("torch>=")
    assert "onnx_unavailable" in info and not (tmp_path / "v2" / "model").exists()
    loaded = torch.jit.load(path)
    inputs = _inputs(original)
    with torch.inference_mode():
        assert loaded(*inputs.values())["last_hidden_state"].shape == (4, 16, 32)
