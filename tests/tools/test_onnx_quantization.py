"""ONNX Runtime quantization measured against the plain library calls, on zoo models exported as users do."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from evals.zoo import ZooModel, build, export_zoo, run_plain
from tests.tools.conftest import mlp_handle
from tools.errors import InvalidArgumentError
from tools.exporting import serialized_size
from tools.loading import load_model
from tools.onnx_quantization import needs_reduce_range, quantize_blocks
from tools.quantization import quantize
from tools.sensitivity import Layer, Probe, choose_mixed, group_layers


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


class Zoo:
    def __init__(self, name: str, directory: Path) -> None:
        self.zoo: ZooModel = build(name)
        self.path = export_zoo(self.zoo, "onnx", directory)
        self.handle = load_model(self.path)
        self.inputs = self.zoo.make_inputs(batch=16, seed=7)
        self.reference = run_plain(self.path, self.inputs)

    def run(self, handle: Any, directory: Path, label: str) -> tuple[np.ndarray, Path]:
        path = directory / f"{self.zoo.name}_{label}.onnx"
        onnx.save_model(handle.model, str(path))
        return run_plain(path, self.inputs), path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Zoo]:
    directory = tmp_path_factory.mktemp("zoo")
    return {name: Zoo(name, directory) for name in ("bert", "vit")}


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_dynamic_int8_is_no_larger_than_the_library_per_channel_call_at_the_same_fidelity(
    models: dict[str, Zoo], name: str, tmp_path: Path
) -> None:
    from onnxruntime.quantization import quantize_dynamic

    m = models[name]
    library = tmp_path / "library.onnx"
    quantize_dynamic(m.path, library, per_channel=True)
    ours = quantize(m.handle, "dynamic_int8")
    out, path = m.run(ours, tmp_path, "dyn")
    assert path.stat().st_size <= library.stat().st_size
    assert _cosine(out, m.reference) >= _cosine(run_plain(library, m.inputs), m.reference) - 0.005
    result = ours.recipe[-1]["result"]
    assert result["per_channel"] is True and result["reduce_range"] is needs_reduce_range()
    assert result["preprocess"].split(" ")[0] in ("symbolic", "ONNX")


def test_dynamic_int8_quantizes_the_embedding_tables(models: dict[str, Zoo]) -> None:
    bert = models["bert"]
    q = quantize(bert.handle, "dynamic_int8")
    gathers = [n for n in bert.handle.model.graph.node if n.op_type == "Gather" and "embeddings" in n.name]
    tables = {n.input[0] for n in gathers} & {t.name for t in bert.handle.model.graph.initializer}
    assert tables, "the zoo's BERT reads its embedding tables with Gather"
    left = {t.name: t for t in q.model.graph.initializer}
    assert not tables & {name for name, t in left.items() if t.data_type == TensorProto.FLOAT}
    assert set(q.recipe[-1]["result"]["layers"]) >= {n.name for n in gathers if n.input[0] in tables}


def test_4bit_blocks_run_in_plain_onnx_runtime_and_are_smaller_than_int8(
    models: dict[str, Zoo], tmp_path: Path
) -> None:
    bert = models["bert"]
    int8 = quantize(bert.handle, "dynamic_int8")
    int4 = quantize(bert.handle, "weight_only_int4")
    out, path = bert.run(int4, tmp_path, "int4")
    assert serialized_size(int4) < serialized_size(int8)
    assert _cosine(out, bert.reference) > 0.98
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops
    result = int4.recipe[-1]["result"]
    assert result["bits"] == 4 and result["block_size"] == 32 and result["symmetric"] is True
    # Blocks of 128 are smaller still; block_size belongs to the 4-bit method only.
    assert serialized_size(quantize(bert.handle, "weight_only_int4", block_size=128)) < serialized_size(int4)
    with pytest.raises(InvalidArgumentError, match="block_size"):
        quantize(bert.handle, "dynamic_int8", block_size=64)
    with pytest.raises(InvalidArgumentError, match="static_int8 for convolutions"):
        quantize(bert.handle, "weight_only_int4", layer_types=["Conv"])


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_weight_only_int8_is_float_accurate_4x_smaller_and_folded_when_the_session_loads(
    models: dict[str, Zoo], name: str, tmp_path: Path
) -> None:
    import onnxruntime as ort

    from tools.runtime import session_config

    m = models[name]
    ours = quantize(m.handle, "weight_only_int8")
    dynamic = quantize(m.handle, "dynamic_int8")
    out, path = m.run(ours, tmp_path, "wo8")
    float_weights = sum(
        int(np.prod(t.dims)) * 4 for t in m.handle.model.graph.initializer if t.data_type == TensorProto.FLOAT
    )
    assert serialized_size(m.handle) - serialized_size(ours) >= 0.7 * float_weights
    assert _cosine(out, m.reference) >= 0.999
    assert _cosine(out, m.reference) >= _cosine(m.run(dynamic, tmp_path, "dyn")[0], m.reference) - 5e-4
    int8 = [t for t in ours.model.graph.initializer if t.data_type == TensorProto.INT8]
    assert int8 and all(t.name.endswith("_int8") or t.name.endswith("_zero_point") for t in int8)
    # The graph names the option that folds its DequantizeLinear nodes at load: without it ONNX Runtime
    # would dequantize at every call; with it the optimized graph holds float weights and no DequantizeLinear.
    assert session_config(onnx.load(str(path))) == {"session.disable_quant_qdq": "1"}

    def optimized_ops(fold: bool) -> set[str]:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / f"optimized_{fold}.onnx")
        if fold:
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return {n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node}

    assert "DequantizeLinear" in optimized_ops(fold=False)
    assert "DequantizeLinear" not in optimized_ops(fold=True)
    result = ours.recipe[-1]["result"]
    assert result["per_channel"] and result["activations"] == "float" and result["layers"]


def test_weight_only_int8_refuses_what_it_cannot_express(models: dict[str, Zoo]) -> None:
    old = onnx.ModelProto()
    old.CopyFrom(models["bert"].handle.model)
    for o in old.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 12
    from tools.errors import UnsupportedFormatError
    from tools.onnx_quantization import _weight_only_int8

    names = [n.name for n in old.graph.node if n.op_type == "MatMul"]
    with pytest.raises(UnsupportedFormatError, match="opset 13"):
        _weight_only_int8(old, names)
    with pytest.raises(InvalidArgumentError, match="block_size"):
        quantize(models["bert"].handle, "weight_only_int8", block_size=32)


def test_fp16_keeps_float32_inputs_and_outputs(models: dict[str, Zoo], tmp_path: Path) -> None:
    vit = models["vit"]
    half = quantize(vit.handle, "fp16")
    graph = half.model.graph
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in [*graph.input, *graph.output])
    assert any(t.data_type == TensorProto.FLOAT16 for t in graph.initializer)
    out, path = vit.run(half, tmp_path, "fp16")
    assert out.dtype == np.float32 and _cosine(out, vit.reference) > 0.999
    load_model(path)  # the converter's unsorted graph is sorted: robopt's own upload checks accept it


def test_fp16_keeps_float32_islands_where_fp16_overflows(tmp_path: Path) -> None:
    """x * 300, squared, averaged, square-rooted: the square (up to ~9e4) overflows fp16 (max 65504)."""
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["big"], name="scale"),
        helper.make_node("Pow", ["big", "two"], ["sq"], name="square"),
        helper.make_node("ReduceMean", ["sq"], ["mean"], name="mean", axes=[-1], keepdims=1),
        helper.make_node("Sqrt", ["mean"], ["rms"], name="root"),
        helper.make_node("Div", ["big", "rms"], ["y"], name="normalize"),
    ]
    inits = [
        numpy_helper.from_array(np.array(300.0, np.float32), "k"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    graph = helper.make_graph(
        nodes,
        "rms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        inits,
    )
    path = tmp_path / "rms.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    handle = load_model(path)
    half = quantize(handle, "fp16")
    islands = set(half.recipe[-1]["result"]["fp32_islands"])
    assert {"square", "mean"} <= islands
    x = np.random.default_rng(0).uniform(-1, 1, (4, 8)).astype(np.float32)
    onnx.save_model(half.model, str(tmp_path / "half.onnx"))
    out = run_plain(tmp_path / "half.onnx", {"x": x})
    assert np.isfinite(out).all() and np.allclose(out, run_plain(path, {"x": x}), atol=1e-2)


@pytest.mark.parametrize("bits", [4, 8])
def test_block_quantized_gather_matches_its_layout(bits: int) -> None:
    rng = np.random.default_rng(bits)
    table = rng.standard_normal((40, 64)).astype(np.float32)
    data, scales = quantize_blocks(table, bits, 32)
    node = helper.make_node(
        "GatherBlockQuantized", ["data", "ids", "scales"], ["y"], domain="com.microsoft",
        gather_axis=0, quantize_axis=1, block_size=32, bits=bits,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(data, "data"), numpy_helper.from_array(scales, "scales")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([0, 7, 39], dtype=np.int64)
    got = session.run(None, {"ids": ids})[0]
    step = np.repeat(scales[ids], 32, axis=1)
    assert np.all(np.abs(got - table[ids]) <= step / 2 + 1e-6)


def test_mixed_precision_keeps_the_costliest_layers_higher_until_the_target(models: dict[str, Zoo]) -> None:
    vit = models["vit"]
    plain = quantize(vit.handle, "weight_only_int4")
    mixed = quantize(vit.handle, "weight_only_int4", accuracy_target=0.99)
    summary = mixed.recipe[-1]["result"]["mixed_precision"]
    assert summary["target_met"] and summary["accuracy_retained_measured"] >= 0.99
    assert summary["groups_kept_high"] and summary["sensitivity"]
    assert mixed.recipe[-1]["result"]["layers_8bit"]
    assert serialized_size(plain) < serialized_size(mixed) < serialized_size(vit.handle)
    assert mixed.recipe[-1]["accuracy_target"] == 0.99


def test_choose_mixed_keeps_the_fewest_costliest_groups_per_byte() -> None:
    """Groups a (big, harmless), b (small, costly), c (small, mild): keeping b alone meets the target."""
    layers = [Layer("a", "blk.0.a", 1000), Layer("b", "blk.0.b", 100), Layer("c", "blk.1.c", 100)]
    cost = {"a": 0.001, "b": 0.05, "c": 0.01}
    built: list[set[str]] = []

    def build(high: set[str]) -> set[str]:
        built.append(set(high))
        return {"a", "b", "c"} - high  # the quantized layers

    def probe(quantized: set[str]) -> Probe:
        err = sum(cost[n] for n in quantized)
        return Probe(accuracy_retained=1.0 - err, relative_error=err)

    _, choice = choose_mixed(group_layers(layers), build, probe, target=0.985)
    assert choice.high == ["b"] and choice.met and choice.accuracy_retained == pytest.approx(0.989)
    assert choice.rounds == len(built) <= 3 + 2 + 1
    # Beyond MAX_GROUPS layers, groups are the repeated blocks.
    many = [Layer(f"n{i}", f"encoder.layer.{i // 4}.w{i % 4}", 10) for i in range(40)]
    groups = group_layers(many)
    assert len(groups) == 10 and groups[0].name == "encoder.layer.0" and len(groups[0].layers) == 4


def test_4bit_on_a_torch_module_goes_through_onnx_runtime_on_cpu() -> None:
    q = quantize(mlp_handle(), "weight_only_int4", backend="onnxruntime")
    assert q.runtime == "onnx" and q.recipe[-1]["result"]["exported_to_onnx"] is True
    assert "MatMulNBits" in {n.op_type for n in q.model.graph.node}


def test_preprocessing_leaves_nothing_in_the_working_directory(
    models: dict[str, Zoo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime's symbolic shape inference dumps the graph into the working directory when it cannot
    finish (the zoo's BERT needs merged dimensions): robopt only runs it where it finishes."""
    monkeypatch.chdir(tmp_path)
    q = quantize(models["bert"].handle, "dynamic_int8")
    assert "merged dimensions" in q.recipe[-1]["result"]["preprocess"]
    assert os.listdir(tmp_path) == []
