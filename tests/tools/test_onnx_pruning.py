"""Structured pruning of ONNX graphs: channel groups really shrink, the graph runs and computes the same
function of the kept channels, and nothing that would break (outputs, attention, residual streams) is cut."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from evals.zoo import build, export_zoo, run_plain
from tools.errors import InvalidArgumentError, UnsupportedFormatError
from tools.handle import InputSpec, ModelHandle
from tools.onnx_pruning import onnx_channel_groups, prune_structured_onnx

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _handle(model: Any, inputs: list[InputSpec]) -> ModelHandle:
    return ModelHandle(runtime="onnx", format="onnx", model=model, inputs=inputs)


def _run(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _inits(model: Any) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _weight(model: Any, node_name: str, pos: int = 1) -> np.ndarray:
    node = next(n for n in model.graph.node if n.name == node_name)
    return _inits(model)[node.input[pos]]


def _kept(original: np.ndarray, pruned: np.ndarray, axis: int) -> list[int]:
    """Which slices along `axis` of a producer's weight survived (its other axes are unchanged)."""
    orig = np.moveaxis(original, axis, 0)
    kept = []
    for piece in np.moveaxis(pruned, axis, 0):
        matches = [i for i in range(orig.shape[0]) if np.array_equal(orig[i], piece)]
        assert len(matches) == 1
        kept.append(matches[0])
    assert kept == sorted(kept)
    return kept


def _masked(model: Any, node_name: str, axis: int, kept: list[int], block: int = 1) -> Any:
    """A copy of `model` whose node reads zeros at the removed input channels of its weight."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    node = next(n for n in out.graph.node if n.name == node_name)
    tensor = next(t for t in out.graph.initializer if t.name == node.input[1])
    weight = numpy_helper.to_array(tensor).copy()
    rows = np.ones(weight.shape[axis] // block, dtype=bool)
    rows[kept] = False
    index = [slice(None)] * weight.ndim
    index[axis] = np.repeat(rows, block)
    weight[tuple(index)] = 0
    tensor.CopyFrom(numpy_helper.from_array(weight, tensor.name))
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _init(name: str, *shape: int) -> Any:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.3, name)


def _scalar(name: str, value: float) -> Any:
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _graph_model(nodes: list[Any], inits: list[Any], x_shape: list[Any], y_shape: list[Any]) -> Any:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# --------------------------------------------------------------------------------------------------
# (1) MLPs: a torch export and a hand-built Gemm graph
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_mlp(tmp_path_factory: pytest.TempPathFactory) -> Any:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8))
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    torch.onnx.export(
        model.eval(), (torch.randn(2, 32),), str(path), input_names=["obs"], output_names=["action"],
        dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}}, dynamo=False,
    )  # fmt: skip
    return onnx.load(str(path))


def test_torch_mlp_halved_runs_and_matches_the_masked_original(torch_mlp: Any) -> None:
    handle = _handle(torch_mlp, [InputSpec(name="obs", shape=[None, 32])])
    before_bytes = torch_mlp.SerializeToString()
    pruned, result = prune_structured_onnx(handle, 0.5)
    assert torch_mlp.SerializeToString() == before_bytes  # the input is never modified
    assert result["engine"] == "onnx_channel_groups" and result["pruned_groups"] == 2
    assert result["channels_before"] == 512 and result["channels_after"] == 256
    assert result["params_after"] <= 0.6 * result["params_before"]
    assert {"params_before", "params_after", "params_removed_fraction", "heads_removed"} <= result.keys()
    assert [g["consumers"] for g in result["groups"]] == [["2"], ["4"]]  # the Sequential's layers
    assert "4" in result["skipped"] and "graph output" in result["skipped"]["4"]
    assert all("ok" in c for c in result["checks"])

    # Same inputs and outputs, other batch sizes too.
    assert [i.name for i in pruned.graph.input] == ["obs"] and [o.name for o in pruned.graph.output] == [
        "action"
    ]
    x = RNG.standard_normal((5, 32)).astype(np.float32)
    (out,) = _run(pruned, {"obs": x})
    assert out.shape == (5, 8)

    # The pruned graph computes exactly what the original computes with the removed channels unread.
    names = [n.name for n in torch_mlp.graph.node if n.op_type == "Gemm"]
    kept0 = _kept(_weight(torch_mlp, names[0]), _weight(pruned, names[0]), axis=0)  # transB: [out, in]
    w1 = _weight(pruned, names[1])
    kept1 = _kept(_weight(torch_mlp, names[1])[:, kept0], w1, axis=0)
    masked = _masked(_masked(torch_mlp, names[1], 1, kept0), names[2], 1, kept1)
    np.testing.assert_allclose(out, _run(masked, {"obs": x})[0], rtol=1e-4, atol=1e-5)
    assert len(kept0) + len(kept1) == 256 and w1.shape == (len(kept1), len(kept0))

    # Outputs change smoothly with the amount (random weights: every channel matters about as much).
    original = _run(torch_mlp, {"obs": x})[0]
    cosines = [
        _cosine(original, _run(prune_structured_onnx(handle, a)[0], {"obs": x})[0]) for a in (0.1, 0.3)
    ]
    assert cosines[0] > 0.9 and cosines[0] > cosines[1] > _cosine(original, out)


def test_weakest_channels_go_first(torch_mlp: Any) -> None:
    """Channels whose producer weights are nearly zero are removed before any other."""
    model = onnx.ModelProto()
    model.CopyFrom(torch_mlp)
    first = next(n for n in model.graph.node if n.op_type == "Gemm")
    weak = RNG.choice(256, 64, replace=False)
    for pos in (1, 2):  # weight rows and bias of the first layer
        tensor = next(t for t in model.graph.initializer if t.name == first.input[pos])
        value = numpy_helper.to_array(tensor).copy()
        value[weak] *= 1e-3
        tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    handle = _handle(model, [InputSpec(name="obs", shape=[None, 32])])
    # Only the first hidden layer (module "0" of the Sequential): 51 of its 256 channels.
    pruned, result = prune_structured_onnx(handle, 0.2, scope="per_layer", include=["0"])
    assert [(g["producers"], g["channels_after"]) for g in result["groups"]] == [(["0"], 205)]
    kept = _kept(_weight(model, first.name), _weight(pruned, first.name), axis=0)
    assert set(range(256)) - set(kept) <= set(weak.tolist())
    x = RNG.standard_normal((16, 32)).astype(np.float32)
    assert _cosine(_run(pruned, {"obs": x})[0], _run(model, {"obs": x})[0]) > 0.999


def test_hand_built_gemm_graph_with_broadcast_constants() -> None:
    # x -> Gemm(transB=0, bias [32]) -> LeakyRelu -> Gemm(transB=1, bias [1, 24]) -> Clip -> Mul [24]
    #   -> Sigmoid-gated (h * Sigmoid(h)) -> Gemm -> y
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1"),
        helper.make_node("LeakyRelu", ["h1"], ["a1"], name="act1", alpha=0.1),
        helper.make_node("Gemm", ["a1", "w2", "b2"], ["h2"], name="fc2", transB=1),
        helper.make_node("Clip", ["h2", "lo", "hi"], ["c2"], name="clip"),
        helper.make_node("Mul", ["c2", "scale"], ["s2"], name="scale_mul"),
        helper.make_node("Sigmoid", ["s2"], ["g2"], name="sig"),
        helper.make_node("Mul", ["s2", "g2"], ["a2"], name="silu"),
        helper.make_node("Gemm", ["a2", "w3", "b3"], ["y"], name="fc3"),
    ]
    inits = [
        _init("w1", 16, 32), _init("b1", 32), _init("w2", 24, 32), _init("b2", 1, 24),
        _scalar("lo", -2.0), _scalar("hi", 2.0), _init("scale", 24), _init("w3", 24, 4), _init("b3", 4),
    ]  # fmt: skip
    model = _graph_model(nodes, inits, ["batch", 16], ["batch", 4])
    # Exporters record shapes of intermediate tensors and of initializers: the resized ones must go.
    model.graph.value_info.extend(
        [
            helper.make_tensor_value_info("h1", TensorProto.FLOAT, ["batch", 32]),
            helper.make_tensor_value_info("w1", TensorProto.FLOAT, [16, 32]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, [24]),
        ]
    )
    pruned, result = prune_structured_onnx(_handle(model, [InputSpec(name="x", shape=[None, 16])]), 0.5)
    assert result["checks"][:2] == ["onnx.checker: ok", "strict shape inference: ok"]
    assert result["pruned_groups"] == 2 and result["channels_before"] == 56
    hidden = ("w1", "b1", "w2", "b2", "scale")
    before = sum(_inits(model)[n].size for n in hidden)
    after = sum(_inits(pruned)[n].size for n in hidden)
    assert after <= 0.6 * before
    kept1 = _kept(_inits(model)["w1"], _inits(pruned)["w1"], axis=1)
    kept2 = _kept(_inits(model)["w2"][:, kept1], _inits(pruned)["w2"], axis=0)
    assert _inits(pruned)["scale"].shape == (len(kept2),) and _inits(pruned)["b2"].shape == (1, len(kept2))
    x = RNG.standard_normal((3, 16)).astype(np.float32)
    masked = _masked(_masked(model, "fc2", 1, kept1), "fc3", 0, kept2)
    np.testing.assert_allclose(_run(pruned, {"x": x})[0], _run(masked, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_conv_batchnorm_depthwise_and_flatten_chain() -> None:
    # Conv -> BatchNorm -> Relu -> depthwise Conv -> Relu -> Conv -> Relu -> AveragePool -> Flatten -> Gemm
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["d1"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d1"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("AveragePool", ["r3"], ["p3"], name="pool", kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Flatten", ["p3"], ["f3"], name="flat"),
        helper.make_node("Gemm", ["f3", "wf", "bf"], ["y"], name="head", transB=1),
    ]
    var = numpy_helper.from_array(RNG.uniform(0.5, 1.5, 8).astype(np.float32), "var")
    inits = [
        _init("w1", 8, 3, 3, 3), _init("b1", 8), _init("g", 8), _init("beta", 8), _init("mean", 8), var,
        _init("wd", 8, 1, 3, 3), _init("bd", 8), _init("w3", 12, 8, 1, 1), _init("b3", 12),
        _init("wf", 5, 12 * 4), _init("bf", 5),
    ]  # fmt: skip
    model = _graph_model(nodes, inits, ["batch", 3, 8, 8], ["batch", 5])
    handle = _handle(model, [InputSpec(name="x", shape=[None, 3, 8, 8])])
    groups = onnx_channel_groups(model)["groups"]
    assert [(g["producers"], g["consumers"]) for g in groups] == [
        (["conv1"], ["conv3"]),
        (["conv3"], ["head"]),
    ]
    pruned, result = prune_structured_onnx(handle, 0.5, scope="per_layer")
    assert [(g["channels_before"], g["channels_after"]) for g in result["groups"]] == [(8, 4), (12, 6)]
    new = _inits(pruned)
    assert new["wd"].shape == (4, 1, 3, 3) and new["g"].shape == new["var"].shape == (4,)
    dw = next(n for n in pruned.graph.node if n.name == "dw")
    assert [a.i for a in dw.attribute if a.name == "group"] == [4]
    assert new["wf"].shape == (5, 6 * 4)  # the Flatten's blocks of 2x2 per channel
    kept1 = _kept(_inits(model)["w1"], new["w1"], axis=0)
    kept3 = _kept(_inits(model)["w3"][:, kept1], new["w3"], axis=0)
    # Depthwise filters and BN statistics follow the kept channels of conv1.
    np.testing.assert_array_equal(new["wd"], _inits(model)["wd"][kept1])
    masked = _masked(_masked(model, "conv3", 1, kept1), "head", 1, kept3, block=4)
    x = RNG.random((2, 3, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(_run(pruned, {"x": x})[0], _run(masked, {"x": x})[0], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# (2) library models exported to ONNX: BERT, Llama (SwiGLU), ResNet
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    root = tmp_path_factory.mktemp("zoo")
    out = {}
    for name in ("bert", "llama", "resnet"):
        zoo = build(name)
        out[name] = (zoo, export_zoo(zoo, "onnx", root))
    return out


def _zoo_handle(zoo: Any, path: Path) -> ModelHandle:
    if zoo.kind == "text":
        specs = [
            InputSpec(name="input_ids", shape=[None, None], dtype="int64", low=0, high=1024),
            InputSpec(name="attention_mask", shape=[None, None], dtype="int64", low=1, high=2),
        ]
    else:
        specs = [InputSpec(name="pixel_values", shape=[None, 3, 32, 32])]
    return _handle(onnx.load(str(path)), specs)


# (model, producers of each pruned group, their consumers, words no changed weight's node may hold)
_ZOO_GROUPS = {
    "bert": (("intermediate.dense",), ("output.dense",), ("attention", "embeddings", "LayerNorm")),
    "llama": (
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
        ("self_attn", "embed", "norm", "lm_head"),
    ),
    "resnet": (("layer.0.convolution",), ("layer.1.convolution",), ("shortcut", "embedder", "classifier")),
}


@pytest.mark.parametrize("name", ["bert", "llama", "resnet"])
def test_zoo_model_prunes_only_its_mlp_or_inner_conv_channels(
    name: str, zoo_files: dict[str, tuple[Any, Path]], tmp_path: Path
) -> None:
    zoo, path = zoo_files[name]
    handle = _zoo_handle(zoo, path)
    original = handle.model
    pruned, result = prune_structured_onnx(handle, 0.5)
    producers, consumers, untouched = _ZOO_GROUPS[name]
    assert result["pruned_groups"] == (4 if name == "resnet" else 2)
    for group in result["groups"]:
        assert sorted(w for p in group["producers"] for w in producers if p.endswith(w)) == sorted(producers)
        assert all(any(c.endswith(w) for w in consumers) for c in group["consumers"])
        assert group["channels_after"] < group["channels_before"]
    assert result["params_after"] < 0.95 * result["params_before"]

    # Only weights of the pruned layers changed; attention, embeddings, norms, heads are as they were.
    before, after = _inits(original), _inits(pruned)
    readers = {i: n.name for n in original.graph.node for i in n.input}
    for init_name, value in before.items():
        if init_name in after and after[init_name].shape == value.shape:
            np.testing.assert_array_equal(after[init_name], value)
        elif init_name in after:
            assert not any(w in readers[init_name] for w in untouched), readers[init_name]

    # Same inputs and outputs; runs at other batch sizes / sequence lengths; the masked original agrees.
    out_path = tmp_path / f"{name}_pruned.onnx"
    onnx.save(pruned, str(out_path))
    assert [i.name for i in pruned.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in pruned.graph.output] == [o.name for o in original.graph.output]
    inputs = zoo.make_inputs(batch=3, seq_len=12, seed=1) if zoo.kind == "text" else zoo.make_inputs(batch=3)
    got = run_plain(out_path, inputs)
    assert got.shape == run_plain(path, inputs).shape
    masked = original
    for group in result["groups"]:
        prod = [n for n in original.graph.node if _module_of(n) == group["producers"][0]][0]
        axis = 0 if prod.op_type == "Conv" else 1
        kept = _kept(_weight(original, prod.name), _weight(pruned, prod.name), axis=axis)
        if name == "llama":  # gate and up cut alike
            up = next(n for n in original.graph.node if _module_of(n) == group["producers"][1])
            assert _kept(_weight(original, up.name), _weight(pruned, up.name), axis=1) == kept
        for cons_name in group["consumers"]:
            cons = next(n for n in original.graph.node if _module_of(n) == cons_name)
            masked = _masked(masked, cons.name, 1 if cons.op_type == "Conv" else 0, kept)
    masked_path = tmp_path / f"{name}_masked.onnx"
    onnx.save(masked, str(masked_path))
    np.testing.assert_allclose(got, run_plain(masked_path, inputs), rtol=1e-3, atol=1e-4)


def _module_of(node: Any) -> str | None:
    from tools.onnx_quantization import onnx_module_path

    return onnx_module_path(node, ()) if node.op_type in ("MatMul", "Gemm", "Conv") else None


def test_resnet_residual_widths_only_when_asked(zoo_files: dict[str, tuple[Any, Path]]) -> None:
    zoo, path = zoo_files["resnet"]
    handle = _zoo_handle(zoo, path)
    default = onnx_channel_groups(handle.model)
    assert all("shortcut" not in p for g in default["groups"] for p in g["producers"])
    assert any("residual" in why for why in default["skipped"].values())
    pruned, result = prune_structured_onnx(handle, 0.5, couple_residuals=True)
    assert result["pruned_groups"] == 8  # every stage's residual width, the stem and the inner convs
    assert any("shortcut" in p for g in result["groups"] for p in g["producers"])
    assert run_plain(_save(pruned, path.with_name("coupled.onnx")), zoo.inputs).shape == zoo.output_shape


def _save(model: Any, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------------------------------
# (3) include / exclude
# --------------------------------------------------------------------------------------------------


def test_include_exclude_select_groups(zoo_files: dict[str, tuple[Any, Path]]) -> None:
    bert = _zoo_handle(*zoo_files["bert"])
    _, only0 = prune_structured_onnx(bert, 0.5, include=["*layer.0*"], verify=False)
    assert [g["name"] for g in only0["groups"]] == ["encoder.encoder.layer.0"]
    _, not0 = prune_structured_onnx(bert, 0.5, exclude=["*layer.0*"], verify=False)
    assert [g["name"] for g in not0["groups"]] == ["encoder.encoder.layer.1"]
    llama = _zoo_handle(*zoo_files["llama"])
    # A producer's node name selects its whole group: up is cut with its gate.
    _, by_node = prune_structured_onnx(
        llama, 0.5, include=["/lm/model/layers.1/mlp/up_proj/MatMul"], verify=False
    )
    assert [g["name"] for g in by_node["groups"]] == ["lm.model.layers.1.mlp"]
    assert len(by_node["groups"][0]["producers"]) == 2
    _, by_module = prune_structured_onnx(llama, 0.5, include=["lm.model.layers.0.mlp"], verify=False)
    assert [g["name"] for g in by_module["groups"]] == ["lm.model.layers.0.mlp"]
    with pytest.raises(InvalidArgumentError, match="no prunable channel group matches"):
        prune_structured_onnx(llama, 0.5, exclude=["*gate_proj*"])
    with pytest.raises(InvalidArgumentError, match="no prunable channel group matches"):
        prune_structured_onnx(llama, 0.5, include=["*self_attn*"])


# --------------------------------------------------------------------------------------------------
# (4) nothing prunable
# --------------------------------------------------------------------------------------------------


def _refused(nodes: list[Any], inits: list[Any], y_shape: list[Any]) -> dict[str, str]:
    model = _graph_model(nodes, inits, ["batch", 16], y_shape)
    info = onnx_channel_groups(model)
    assert info["groups"] == []
    with pytest.raises(
        InvalidArgumentError, match="nothing in this ONNX graph can be pruned structurally"
    ) as err:
        prune_structured_onnx(_handle(model, [InputSpec(name="x", shape=[None, 16])]), 0.5)
    assert err.value.details and "refused" in err.value.details
    return info["skipped"]


def test_graphs_with_nothing_prunable_raise_saying_why() -> None:
    single = _refused(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="only")], [_init("w", 16, 4)], ["batch", 4]
    )
    assert "graph output" in single["only"]
    residual = _refused(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["a"], name="act"),
            helper.make_node("Add", ["a", "x"], ["r"], name="residual"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
        ],
        [_init("w1", 16, 16), _init("w2", 16, 4)],
        ["batch", 4],
    )
    assert "graph input" in residual["fc1"]
    norm = _refused(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("LayerNormalization", ["h", "ln_g", "ln_b"], ["n"], name="ln"),
            helper.make_node("MatMul", ["n", "w2"], ["y"], name="fc2"),
        ],
        [_init("w1", 16, 16), _init("ln_g", 16), _init("ln_b", 16), _init("w2", 16, 4)],
        ["batch", 4],
    )
    assert "LayerNormalization" in norm["fc1"]
    heads = _refused(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="q_proj"),
            helper.make_node("Reshape", ["h", "shape"], ["r"], name="to_heads"),
            helper.make_node("Reshape", ["r", "back"], ["m"], name="from_heads"),
            helper.make_node("MatMul", ["m", "w2"], ["y"], name="o_proj"),
        ],
        [
            _init("w1", 16, 16), _init("w2", 16, 4),
            numpy_helper.from_array(np.array([0, 4, 4], dtype=np.int64), "shape"),
            numpy_helper.from_array(np.array([0, 16], dtype=np.int64), "back"),
        ],
        ["batch", 4],
    )  # fmt: skip
    assert "Reshape" in heads["q_proj"]
    shared = _refused(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="tied1"),
            helper.make_node("Relu", ["h"], ["a"], name="act"),
            helper.make_node("MatMul", ["a", "w"], ["y"], name="tied2"),
        ],
        [_init("w", 16, 16)],
        ["batch", 16],
    )
    assert "shared" in shared["tied1"]


def test_quantized_and_weightless_graphs_are_refused() -> None:
    qdq = _graph_model(
        [
            helper.make_node("DequantizeLinear", ["wq", "s"], ["w"], name="dq"),
            helper.make_node("MatMul", ["x", "w"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["y"], name="act"),
        ],
        [numpy_helper.from_array(RNG.integers(-8, 8, (16, 16)).astype(np.int8), "wq"), _scalar("s", 0.1)],
        ["batch", 16],
        ["batch", 16],
    )
    with pytest.raises(UnsupportedFormatError, match="already quantized"):
        prune_structured_onnx(_handle(qdq, [InputSpec(name="x", shape=[None, 16])]), 0.5)
    old_style = _graph_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["a"], name="act"),
            helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
        ],
        [_init("w1", 16, 32), _init("w2", 32, 4)],
        ["batch", 16],
        ["batch", 4],
    )
    for t in old_style.graph.initializer:  # IR version 3: every initializer is also a graph input
        old_style.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    with pytest.raises(InvalidArgumentError, match="also graph inputs"):
        prune_structured_onnx(_handle(old_style, [InputSpec(name="x", shape=[None, 16])]), 0.5)
    plain = _graph_model([helper.make_node("Relu", ["x"], ["y"])], [], ["batch", 16], ["batch", 16])
    with pytest.raises(InvalidArgumentError, match="no MatMul/Gemm/Conv"):
        prune_structured_onnx(_handle(plain, [InputSpec(name="x", shape=[None, 16])]), 0.5)


def test_amount_too_small_for_a_whole_channel(torch_mlp: Any) -> None:
    handle = _handle(torch_mlp, [InputSpec(name="obs", shape=[None, 32])])
    with pytest.raises(InvalidArgumentError, match="removes no whole channel"):
        prune_structured_onnx(handle, 0.001, scope="per_layer")


# --------------------------------------------------------------------------------------------------
# through the tool: prune(), the registry, then the planner's next steps (quantize, inspect)
# --------------------------------------------------------------------------------------------------


def test_prune_dispatches_onnx_handles_and_the_result_quantizes(torch_mlp: Any) -> None:
    from tools.profile import inspect_model
    from tools.pruning import prune
    from tools.quantization import quantize
    from tools.registry import run_tool
    from tools.runtime import forward

    handle = _handle(torch_mlp, [InputSpec(name="obs", shape=[None, 32])])
    pruned = prune(handle, "structured", 0.5, exclude=["0"])
    assert pruned.runtime == "onnx" and pruned.format == "onnx" and handle.recipe == []
    step = pruned.recipe[-1]
    assert step["method"] == "structured" and step["exclude"] == ["0"]
    assert step["result"]["engine"] == "onnx_channel_groups" and step["result"]["pruned_groups"] == 1
    assert step["result"]["params_after"] < step["result"]["params_before"]
    same = run_tool("prune", handle, {"method": "structured", "amount": 0.5, "exclude": ["0"]})
    assert same.recipe[-1]["result"]["params_after"] == step["result"]["params_after"]
    profile = inspect_model(pruned)
    assert profile.total_parameters == step["result"]["params_after"]
    x = {"obs": RNG.standard_normal((4, 32)).astype(np.float32)}
    quantized = quantize(pruned, "dynamic_int8")
    np.testing.assert_allclose(forward(quantized, x), forward(pruned, x), atol=0.05)
