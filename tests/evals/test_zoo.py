"""The model zoo: every library architecture exports in every format, plainly, and runs as the eager model.

Each (model, format) case exports into its own tmp_path as a user would, runs the file with the
plain runtime (`run_plain`) and compares with the eager module, on the example inputs and on inputs
of another batch size (and sequence length, for text models) to check the dynamic axes. Models are
built once per module; the whole file takes about 30 s on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evals.zoo import (
    BATCH,
    ZOO_FORMATS,
    ZOO_MODELS,
    ZooModel,
    archive_entries,
    build,
    export_zoo,
    onnx_metadata,
    run_plain,
    zoo_cases,
)

CASES = list(zoo_cases())
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def zoo() -> dict[str, ZooModel]:
    """Each zoo model, built on first use and shared by the module's tests."""

    class _Lazy(dict):
        def __missing__(self, name: str) -> ZooModel:
            self[name] = model = build(name)
            return model

    return _Lazy()


def _rel_diff(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-6))


def test_zoo_lists_the_required_architectures_and_cases() -> None:
    assert {"bert", "llama", "vit", "resnet"} <= set(ZOO_MODELS)
    assert {"dinov2", "siglip"} & set(ZOO_MODELS)
    assert len(ZOO_MODELS) >= 5
    assert ZOO_FORMATS == ("onnx", "torchscript", "pt2")
    assert len(CASES) == len(set(CASES)) == len(ZOO_MODELS) * len(ZOO_FORMATS) >= 15


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_models_are_small_but_meaningful_with_realistic_inputs(zoo: dict[str, ZooModel], name: str) -> None:
    model = zoo[name]
    assert not model.module.training
    inner = next(model.module.children())  # the user's wrapper holds the library model
    assert type(inner).__name__ == model.hf_class and type(inner).__module__.startswith("transformers.")
    assert 100_000 < model.parameter_count and model.fp32_bytes < 3 * 1024 * 1024
    config = model.config
    hidden = getattr(config, "hidden_size", None) or config.hidden_sizes[-1]
    layers = getattr(config, "num_hidden_layers", None) or sum(config.depths)
    assert hidden % 32 == 0 and layers >= 2
    assert list(model.inputs) == model.input_names
    for arr in model.inputs.values():
        assert arr.shape[0] == BATCH
    if model.kind == "text":
        ids, mask = model.inputs["input_ids"], model.inputs["attention_mask"]
        assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape
        low, high = model.input_ranges["input_ids"]
        assert low == 0 and high == config.vocab_size and ids.min() >= low and ids.max() < high
        assert (mask == 1).all()
    else:
        pixels = model.inputs["pixel_values"]
        assert pixels.dtype == np.float32 and pixels.shape == (BATCH, 3, 32, 32)
        assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert model.output_shape[0] == BATCH
    if model.output_kind == "embedding":
        assert len(model.output_shape) == 2 and model.output_shape[1] % 32 == 0
    if name == "llama":
        assert model.output_shape == (BATCH, ids.shape[1], config.vocab_size)
    ref = model.reference()
    assert np.isfinite(ref).all() and ref.std() > 0


def test_build_is_deterministic() -> None:
    first, second = build("resnet"), build("resnet")
    np.testing.assert_array_equal(first.inputs["pixel_values"], second.inputs["pixel_values"])
    np.testing.assert_array_equal(first.reference(), second.reference())


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "fmt"), CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_export_is_plain_and_runs_like_the_eager_model(
    zoo: dict[str, ZooModel], name: str, fmt: str, tmp_path: Path
) -> None:
    model = zoo[name]
    path = export_zoo(model, fmt, tmp_path)

    # Exactly one file, as the user's exporter writes it: no sidecars, no robopt extra files or metadata.
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert path.suffix == {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}[fmt]
    if fmt == "onnx":
        assert archive_entries(path) == [] and onnx_metadata(path) == {}
    else:
        entries = archive_entries(path)
        assert entries, "TorchScript and .pt2 files are zip archives"
        assert not [e for e in entries if "/extra/" in e or "robopt" in e.lower()]

    out = run_plain(path, model.inputs)
    ref = model.reference()
    assert out.dtype == np.float32 and out.shape == ref.shape == model.output_shape
    assert _rel_diff(out, ref) < REL_TOL

    # Another batch size (and sequence length): the dynamic axes work.
    other = model.make_inputs(batch=3, seq_len=9, seed=1)
    other_ref = model.reference(other)
    other_out = run_plain(path, other)
    assert other_out.shape == other_ref.shape
    assert _rel_diff(other_out, other_ref) < REL_TOL


def test_run_plain_takes_positional_arrays_and_refuses_other_files(
    zoo: dict[str, ZooModel], tmp_path: Path
) -> None:
    model = zoo["bert"]
    path = export_zoo(model, "onnx", tmp_path)
    by_name = run_plain(path, model.inputs)
    positional = run_plain(path, [model.inputs[n] for n in model.input_names])
    np.testing.assert_array_equal(by_name, positional)
    with pytest.raises(ValueError, match="inputs"):
        run_plain(path, [model.inputs["input_ids"]])
    with pytest.raises(ValueError, match="run_plain runs"):
        run_plain(tmp_path / "model.safetensors", model.inputs)
    with pytest.raises(ValueError, match="unknown format"):
        export_zoo(model, "tflite", tmp_path)
    with pytest.raises(KeyError, match="unknown zoo model"):
        build("gpt5")
