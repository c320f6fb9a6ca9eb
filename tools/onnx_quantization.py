"""ONNX Runtime quantization of ONNX graphs: the ONNX backend of `tools.quantization.quantize`.

Each method is the library's best call for the model, measured against the plain calls a user would make
(`bench/vs_libraries.py`):

- Every method first runs ONNX Runtime's `quant_pre_process` (symbolic shape inference, then ONNX
  shape inference and the runtime's graph fusions; when symbolic inference fails it retries without it,
  then without fusions, then quantizes the graph as it is; the result says which). Fused graphs hold
  fewer nodes, so the file is smaller and the quantizers see more shapes.
- dynamic_int8: `quantize_dynamic` with per-channel int8 MatMul weights (the runtime fuses them into
  DynamicQuantizeMatMul, which has per-column scales), the embedding tables (Gather) in int8 too, and
  `MatMulConstBOnly` so activation x activation products (attention scores) stay in float. Gemm is
  rewritten to MatMul + Add first; Conv stays float (ConvInteger is slow on CPU: static_int8 is the
  method for convolutions). `reduce_range` (7-bit weights) only on an x86 CPU without VNNI, where the
  u8 x s8 kernel saturates: on a VNNI CPU it doubled the output error of a 768x3072 MatMul (2.5% against
  1.5%) and bought nothing.
- static_int8: QDQ `quantize_static`, per-channel symmetric int8 weights, asymmetric uint8 activations
  calibrated (MinMax) on the evaluation data or synthesized inputs, embedding tables included,
  constant-B MatMuls only.
- weight_only_int4: `MatMulNBitsQuantizer`: symmetric 4-bit MatMul weights in blocks of `block_size`
  (32 default, 64, 128) along the input axis, computed with int8 activations (accuracy_level 4: 3x faster
  than fp32 compute on CPU, same error); embedding tables as 4-bit `GatherBlockQuantized` (packed in
  uint8, so the graph keeps its opset, where the library's own Gather path forces opset 21 and breaks
  graphs with ReduceMean). Layers kept at higher precision by `accuracy_target` become 8-bit blocks.
- weight_only_int8: int8 weights per output channel (symmetric) behind `DequantizeLinear` nodes, for
  MatMul/Gemm, Conv and embedding tables; activations stay float. The file holds int8, and ONNX Runtime
  folds the dequantization into float weights when the session loads (session option
  `session.disable_quant_qdq=1`, which `tools.runtime.onnx_session` sets for such graphs and the graph's
  metadata names): it runs at the float graph's speed, 4x smaller on disk, at float accuracy. On the
  reacher MLP of the eval suite (2-core CPU) it ran 0.015 ms at batch 1 against 0.054 ms for torch eager
  and retained 100% where MatMulNBits' 8-bit blocks (int8 activations) kept 95%; without the option the
  runtime dequantizes at every call (0.39 ms).
- fp16: `convert_float_to_float16(keep_io_types=True)`, with fp32 islands: the nodes whose float32
  outputs (on calibration inputs) leave fp16's range, and their consumers, stay float32; if the fp16
  graph's outputs still drift (cosine to float32 below 0.999, or not finite), normalizations and
  reductions (LayerNormalization, Softmax, ReduceMean, Pow, ...) stay float32 too.

Mixed precision (`accuracy_target`): `tools.sensitivity` quantizes one layer group at a time, ranks the
groups by the output error they cause per byte they save, and keeps the costliest at higher precision
(float; 8-bit for weight_only_int4) until `evaluate` (the gate's own metric, on the same data) retains
the target.

Size targets (`size_target`, weight_only_int4): `tools.sensitivity.choose_for_size` picks, per layer group,
float, int8 (per channel, folded at load), a fraction (1/4, 3/8, 1/2) of a MatMul's output channels in
4-bit with the rest int8, or 4-bit (asymmetric blocks), at the least measured error that fits the bytes.
On the eval suite's reacher MLP (10-256-256-2) uniform int8 is 3.70x smaller and cannot reach 4x; 3/8 of
the hidden layer's channels in 4-bit reached 4.07x at 100.6% of the accuracy, where the whole layer in
4-bit kept 94% (2026-12-03, 2-core CPU; `python -m evals run --suite smoke --case reacher-mlp` runs it).

Layer selection: `include` / `exclude` patterns match the node name, its weight initializers and the torch
module the node was exported from (see `onnx_layer_names`); excluded layers stay float. The input handle
is never modified.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tools.errors import InvalidArgumentError, UnsupportedFormatError
from tools.handle import ModelHandle
from tools.runtime import (
    FOLD_WEIGHTS_CONFIG,
    check_inputs,
    session_config,
    set_session_config,
    slice_batch,
    synthesize_inputs,
)
from tools.selection import no_layers as _no_layers
from tools.selection import selected as _selected

ONNX_METHODS = ("dynamic_int8", "static_int8", "weight_only_int4", "weight_only_int8", "fp16")
BLOCK_SIZES = (32, 64, 128)
DEFAULT_BLOCK_SIZE = 32
FP16_MAX = 65504.0
_FP16_SAFE = FP16_MAX / 4  # headroom: calibration inputs do not show the largest activations
_FP16_MIN_COSINE = 0.999
# Kept in float32 when the fp16 graph drifts: normalizations and reductions that fp16 loses precision in.
_FP16_SENSITIVE_OPS = (
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Erf",
)

# torch layer types -> ONNX op types.
_ONNX_OPS: dict[str, tuple[str, ...]] = {
    "Linear": ("MatMul", "Gemm"),
    "Conv1d": ("Conv",),
    "Conv2d": ("Conv",),
    "Conv3d": ("Conv",),
    "Embedding": ("Gather",),
}
_ONNX_DEFAULT_OPS: dict[str, tuple[str, ...]] = {
    "dynamic_int8": ("MatMul", "Gather", "Conv"),  # Gemm is rewritten to MatMul + Add first
    "static_int8": ("MatMul", "Gemm", "Conv", "Gather"),
    "weight_only_int4": ("MatMul", "Gather"),
    "weight_only_int8": ("MatMul", "Gather", "Conv"),
}
# Ops each method can quantize (after Gemm -> MatMul where the method needs it).
_SUPPORTED_OPS: dict[str, tuple[str, ...]] = {
    "dynamic_int8": ("MatMul", "Gather", "Conv"),
    "static_int8": ("MatMul", "Gemm", "Conv", "Gather"),
    "weight_only_int4": ("MatMul", "Gather"),
    "weight_only_int8": ("MatMul", "Gather", "Conv"),
}
# Which input of a node holds its weight.
_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "Gather": 0}


def as_onnx_handle(handle: ModelHandle) -> ModelHandle:
    from tools.exporting import to_onnx_model

    model = to_onnx_model(handle)
    return handle.clone(model=model, runtime="onnx", format="onnx", device="cpu")


def _name_nodes(graph: Any) -> None:
    """ONNX Runtime's quantizers select nodes by name; give unnamed nodes stable names."""
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _gemm_to_matmul(model: Any) -> int:
    """Rewrite Gemm (constant B, alpha=beta=1, no transA) as MatMul + Add, which dynamic int8 quantizes.

    The MatMul keeps the Gemm's name, so include/exclude patterns on node names still apply.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    new_nodes = []
    rewritten = 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or node.input[1] not in inits
            or attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            new_nodes.append(node)
            continue
        weight_name = node.input[1]
        if attrs.get("transB", 0):
            weight = numpy_helper.to_array(inits[weight_name]).T.copy()
            weight_name = f"{node.input[1]}_transposed"
            if weight_name not in inits:
                tensor = numpy_helper.from_array(weight, weight_name)
                graph.initializer.append(tensor)
                inits[weight_name] = tensor
        has_bias = len(node.input) > 2 and node.input[2]
        matmul_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        new_nodes.append(
            helper.make_node("MatMul", [node.input[0], weight_name], [matmul_out], name=node.name)
        )
        if has_bias:
            new_nodes.append(
                helper.make_node(
                    "Add", [matmul_out, node.input[2]], [node.output[0]], name=f"{node.name}_bias"
                )
            )
        rewritten += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    # Drop initializers no node uses any more (the untransposed weights).
    used = {i for n in graph.node for i in n.input} | {i.name for i in graph.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return rewritten


def onnx_module_path(node: Any, inits: Iterable[str] = ()) -> str | None:
    """The torch module a node was exported from ('head', 'encoder.0', 'layers.0.mlp.up_proj'), if known.

    The TorchScript exporter names nodes by module scope: `/head/Gemm`, `/encoder/encoder.0/Gemm` (a
    Sequential called as a module: its child's scope repeats the parent's name), `/layers.0/mlp/up_proj/
    MatMul` (a ModuleList item). Failing that (unnamed nodes, the dynamo exporter), the weight
    initializer's name (`head.weight`) gives the module.
    """
    name = str(node.name or "")
    if name.startswith("/") and name.count("/") >= 2:
        parts: list[str] = []
        for scope in name.strip("/").split("/")[:-1]:
            if parts and scope.startswith(".".join(parts) + "."):
                parts = [scope]  # the scope already holds the qualified name so far
            elif parts and scope.startswith(parts[-1] + "."):
                parts[-1] = scope  # a Sequential's child: 'encoder' then 'encoder.0'
            else:
                parts.append(scope)
        if parts:
            return ".".join(parts)
    init_names = set(inits)
    for i in node.input:
        if i in init_names and not i.startswith("onnx::"):
            for suffix in (".weight", ".bias"):
                if i.endswith(suffix) and len(i) > len(suffix):
                    return i[: -len(suffix)]
    return None


def _onnx_node_names(node: Any, inits: set[str]) -> list[str]:
    """Every name a pattern may match for a node: node name, weight names, torch module path."""
    names = [node.name, *(i for i in node.input if i in inits)]
    module = onnx_module_path(node, inits)
    if module:
        names.append(module)
    return names


def onnx_layer_names(
    model: Any, op_types: Iterable[str], include: list[str] | None, exclude: list[str] | None
) -> list[str]:
    """Node names of the given op types that pass include/exclude.

    Patterns match the node name (`/head/Gemm`), its weight initializers (`head.weight`) or the torch
    module it came from (`head`), so torch names as `inspect_model` reports them work on ONNX graphs.
    """
    return [
        node.name
        for node in _weight_nodes(model, op_types)
        if _selected(_onnx_node_names(node, {t.name for t in model.graph.initializer}), include, exclude)
    ]


def _weight_of(node: Any, inits: dict[str, Any]) -> str | None:
    """The float weight initializer a node quantizes (MatMul/Gemm/Conv B, Gather's table), if any."""
    from onnx import TensorProto

    index = _WEIGHT_INPUT.get(node.op_type)
    if index is None or len(node.input) <= index:
        return None
    tensor = inits.get(node.input[index])
    if tensor is None or tensor.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        return None
    if len(tensor.dims) < 2:
        return None
    return str(tensor.name)


def _weight_nodes(model: Any, op_types: Iterable[str]) -> list[Any]:
    inits = {t.name: t for t in model.graph.initializer}
    wanted = set(op_types)
    return [n for n in model.graph.node if n.op_type in wanted and _weight_of(n, inits) is not None]


def _onnx_kept_float(model: Any, op_types: Iterable[str], chosen: Iterable[str]) -> list[str]:
    """Layers of the quantized op types left in float, by torch module path where known."""
    inits = {t.name for t in model.graph.initializer}
    picked = set(chosen)
    return [
        onnx_module_path(n, inits) or n.name for n in _weight_nodes(model, op_types) if n.name not in picked
    ]


def _onnx_op_types(method: str, layer_types: list[str] | None) -> tuple[str, ...]:
    if not layer_types:
        return _ONNX_DEFAULT_OPS[method]
    ops: list[str] = []
    for t in layer_types:
        if t in _ONNX_OPS:
            ops.extend(_ONNX_OPS[t])
        elif t[:1].isupper():
            ops.append(t)  # an ONNX op type given directly (MatMul, Gemm, Conv, Gather)
    if method in ("dynamic_int8", "weight_only_int4", "weight_only_int8"):
        ops = ["MatMul" if o == "Gemm" else o for o in ops]
    supported = _SUPPORTED_OPS.get(method, ())
    unsupported = sorted({o for o in ops if o not in supported})
    if unsupported and method in _SUPPORTED_OPS:
        raise InvalidArgumentError(
            f"{method} on ONNX Runtime quantizes {', '.join(supported)} nodes, not {', '.join(unsupported)}"
            + (" (use static_int8 for convolutions)" if "Conv" in unsupported else "")
        )
    return tuple(dict.fromkeys(ops))


@functools.cache
def needs_reduce_range() -> bool:
    """7-bit weights only where the int8 kernel saturates: x86 without VNNI (u8 x s8 via vpmaddubsw)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False  # ARM's int8 dot products do not saturate
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown x86: ONNX Runtime's own advice for CPUs without VNNI
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    return not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def quantize_onnx(
    handle: ModelHandle,
    method: str,
    include: list[str] | None,
    exclude: list[str] | None,
    layer_types: list[str] | None,
    calibration_samples: int,
    seed: int,
    step: dict[str, Any],
    *,
    block_size: int | None = None,
    accuracy_target: float | None = None,
    size_target: float | None = None,
) -> ModelHandle:
    import onnx

    if method in ("bnb_int8", "bnb_nf4"):
        raise UnsupportedFormatError(
            f"{method} applies to torch models; for an ONNX model use dynamic_int8, static_int8, "
            "weight_only_int4, weight_only_int8 or fp16",
        )
    if method == "bf16":
        raise UnsupportedFormatError(
            "bf16 is not offered for ONNX models (ONNX Runtime's CPU kernels lack bfloat16); use fp16",
        )
    if block_size is not None and (method != "weight_only_int4" or block_size not in BLOCK_SIZES):
        raise InvalidArgumentError(
            f"block_size applies to weight_only_int4 and is one of {', '.join(map(str, BLOCK_SIZES))}"
        )
    if (accuracy_target is not None or size_target is not None) and method == "fp16":
        raise InvalidArgumentError(
            "accuracy_target and size_target apply to dynamic_int8, static_int8 and weight_only_int4"
        )
    model = onnx.ModelProto()
    model.CopyFrom(handle.model)
    _name_nodes(model.graph)
    prepared, how = _preprocess(model)
    step["result"]["preprocess"] = how
    if method == "fp16":
        return _onnx_fp16(handle, prepared, include, exclude, layer_types, seed, step)
    options = (
        include,
        exclude,
        layer_types,
        calibration_samples,
        seed,
        block_size,
        accuracy_target,
        size_target,
    )
    if prepared is model:
        return _quantize_prepared(handle, method, model, step, *options)
    try:
        return _quantize_prepared(handle, method, prepared, step, *options)
    except InvalidArgumentError:
        raise
    except Exception as exc:  # noqa: BLE001 - the pre-processed graph broke a quantizer: the plain graph
        step["result"]["preprocess"] = (
            f"not used: quantizing the pre-processed graph failed ({str(exc)[:200]})"
        )
        return _quantize_prepared(handle, method, model, step, *options)


def _quantize_prepared(
    handle: ModelHandle,
    method: str,
    source: Any,
    step: dict[str, Any],
    include: list[str] | None,
    exclude: list[str] | None,
    layer_types: list[str] | None,
    calibration_samples: int,
    seed: int,
    block_size: int | None,
    accuracy_target: float | None,
    size_target: float | None = None,
) -> ModelHandle:
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(source)
    if method in ("dynamic_int8", "weight_only_int4", "weight_only_int8"):
        _gemm_to_matmul(model)
    op_types = _onnx_op_types(method, layer_types)
    names = onnx_layer_names(model, op_types, include, exclude)
    if not names:
        _no_layers(method, op_types, include, exclude)
    block = block_size or DEFAULT_BLOCK_SIZE
    reader = _CalibrationReader(handle, calibration_samples, seed) if method == "static_int8" else None

    def build(high: set[str]) -> Any:
        low = [n for n in names if n not in high]
        eight = [n for n in names if n in high] if method == "weight_only_int4" else []
        return _apply(model, method, low, eight, block, reader)

    result = step["result"]
    if size_target is not None:
        quantized, sized = _sized(handle, model, names, method, block, reader, size_target, accuracy_target)
        high = {n for n, p in sized.layers.items() if p != "int4"} if method == "weight_only_int4" else set()
        result["mixed_precision"] = sized.summary()
        result["layer_precisions"] = sized.layers
    elif accuracy_target is None:
        quantized = build(set())
        high = set()
    else:
        quantized, choice = _mixed(handle, model, names, build, accuracy_target, method)
        high = set(choice.high)
        result["mixed_precision"] = choice.summary()
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    still_float = {t.name for t in quantized.graph.initializer}
    done = [n for n in names if _weight_of(nodes[n], inits) not in still_float]
    low_done = [n for n in done if n not in high]
    if not low_done and not (method == "weight_only_int4" and done):
        raise InvalidArgumentError(
            f"{method}: ONNX Runtime quantized none of the {len(names)} selected layers "
            f"({', '.join(sorted({nodes[n].op_type for n in names}))}: weights of a shape it does not take)"
        )
    del quantized.graph.value_info[:]  # shape annotations of the pre-processing: not needed to run
    result.update(backend="onnxruntime", layers=low_done)
    if method == "weight_only_int4":
        result.update(
            layers_8bit=[n for n in done if n in high],
            block_size=block,
            bits=4,
            symmetric=size_target is None,
            accuracy_level=4,
        )
        if size_target is not None:
            result["layers_split"] = {n: p for n, p in result["layer_precisions"].items() if ":" in p}
            if session_config(quantized):
                result["session_config"] = session_config(quantized)
    elif method == "weight_only_int8":
        result.update(
            per_channel=True, symmetric=True, activations="float", session_config=FOLD_WEIGHTS_CONFIG
        )
    else:
        result.update(per_channel=True, reduce_range=needs_reduce_range())
    if reader is not None:
        result["calibration_source"] = reader.source
    result["kept_float"] = _onnx_kept_float(model, op_types, done)
    return handle.with_step(quantized, step, runtime="onnx", format="onnx", device="cpu")


def _apply(
    model: Any, method: str, low: list[str], eight: list[str], block: int, reader: _CalibrationReader | None
) -> Any:
    """`model` (not modified) with `low` quantized by `method`; for weight_only_int4, `eight` in 8 bits."""
    import onnx

    if method == "weight_only_int4":
        return _weight_only_blocks(model, low, eight, block)
    if method == "weight_only_int8":
        return _weight_only_int8(model, low)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not low:  # ONNX Runtime reads an empty node list as "every node"
        return out
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    by_name = {n.name: n.op_type for n in model.graph.node}
    op_types = sorted({by_name[n] for n in low})
    with tempfile.TemporaryDirectory(prefix="robopt-quant-") as tmp, _quiet_ort():
        source, target = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save_model(model, str(source))
        if method == "dynamic_int8":
            quantize_dynamic(
                source,
                target,
                op_types_to_quantize=op_types,
                nodes_to_quantize=low,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=needs_reduce_range(),
                extra_options={"MatMulConstBOnly": True},
            )
        else:
            assert reader is not None
            reader.rewind()
            quantize_static(
                source,
                target,
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                nodes_to_quantize=low,
                per_channel=True,
                reduce_range=needs_reduce_range(),
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={
                    "WeightSymmetric": True,
                    "ActivationSymmetric": False,
                    "MatMulConstBOnly": True,
                },
            )
        return onnx.load(str(target), load_external_data=False)


# ---------------------------------------------------------------------------------------------
# 4-bit (and 8-bit) block-wise weights


def _weight_only_blocks(
    model: Any, four: list[str], eight: list[str], block: int, *, symmetric: bool = True
) -> Any:
    """4-bit blocks of `block` for `four`; `eight` (the layers mixed precision keeps higher) in 8-bit blocks.

    8-bit MatMulNBits rather than dynamic int8 for the higher-precision layers: its kernel quantizes the
    activations per block too, where DynamicQuantizeMatMul takes one scale for the whole activation, and on
    the Llama of the zoo that was the difference between 97.7% and 95.1% top-1 agreement with every layer
    at 8 bits (and blocks of 32 against 128: 97.7% against 96.8%). Blocks are never wider than a layer's
    input (MatMulNBits would pad it).
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    kinds = {n.name: n.op_type for n in model.graph.node}
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    with _quiet_ort():
        for bits, names, widest in ((4, four, block), (8, eight, block)):
            by_block: dict[int, list[str]] = {}
            for name in (n for n in names if kinds.get(n) == "MatMul"):
                width = int(inits[_weight_of(nodes[name], inits) or ""].dims[-2])
                size = widest
                while size > 16 and size > width:
                    size //= 2
                by_block.setdefault(size, []).append(name)
            for size, group in sorted(by_block.items()):
                out = _matmul_nbits(out, group, bits, size, symmetric=symmetric or bits == 8)
    gathers = {n: 4 for n in four if kinds.get(n) == "Gather"} | {
        n: 8 for n in eight if kinds.get(n) == "Gather"
    }
    if gathers:
        _gather_blocks(out, gathers, block)
    return out


# Size-target precisions between int8 and int4 for a MatMul: that fraction of its output channels in 4-bit
# blocks, the rest int8 (tools.sensitivity's knapsack picks one per layer group like any precision).
SPLIT_PRECISIONS = ("int4:0.25", "int4:0.375", "int4:0.5")


def _weight_only_sized(model: Any, assign: dict[str, str], block: int) -> Any:
    """`model` (not modified) at the size-target precisions `assign` (layer -> "int8", "int4" or "int4:f").

    What each precision runs as, chosen for the least error at the bytes it takes (a size target is about
    the file, the kernels keep their speed):
    - "int4": MatMulNBits 4-bit blocks, asymmetric (a zero point per block: on the eval suite's reacher MLP
      its hidden 256x256 layer in 4-bit kept 97.8% of the within-tolerance accuracy, against 94.4%
      symmetric); 4-bit embedding tables (GatherBlockQuantized).
    - "int8": MatMul weights per channel behind DequantizeLinear, folded into float at load (float
      accuracy: 100.5% on that MLP, where MatMulNBits 8-bit blocks kept 95%); a graph older than opset 13
      has no per-channel DequantizeLinear and takes 8-bit blocks. Tables: 8-bit GatherBlockQuantized.
    - "int4:f": a MatMul's output channels split in two MatMuls, the fraction f whose 4-bit error is the
      least in 4-bit blocks and the rest int8 as above, concatenated and put back in order (one Gather);
      on other ops, "int8".
    """
    kinds = {n.name: n.op_type for n in model.graph.node}
    splits = {
        n: float(p.split(":", 1)[1])
        for n, p in assign.items()
        if p.startswith("int4:") and kinds.get(n) == "MatMul"
    }
    graph, parts = _split_output_channels(model, splits, block)
    four = [n for n, p in assign.items() if p == "int4"] + [low for low, _ in parts.values()]
    eight = [n for n, p in assign.items() if p == "int8" or (p.startswith("int4:") and n not in parts)]
    eight += [high for _, high in parts.values()]
    matmul_eight = [n for n in eight if kinds.get(n, "MatMul") == "MatMul"]
    if matmul_eight and _opset(graph) >= 13:
        graph = _weight_only_int8(graph, matmul_eight)
        eight = [n for n in eight if n not in matmul_eight]
    return _weight_only_blocks(graph, four, eight, block, symmetric=False)


def _split_output_channels(
    model: Any, fractions: dict[str, float], block: int
) -> tuple[Any, dict[str, tuple[str, str]]]:
    """A copy of `model` with each MatMul in `fractions` split by output channel: (graph, node -> (the
    part for 4-bit, the part for int8)). The 4-bit part holds the channels with the least relative 4-bit
    block error; Concat + Gather restore the original channel order. A weight that another node also reads,
    or one narrower than 16 channels, is left whole."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    readers = _reader_counts(graph)
    parts: dict[str, tuple[str, str]] = {}
    nodes: list[Any] = []
    for node in graph.node:
        f = fractions.get(node.name)
        weight = inits.get(node.input[1]) if f is not None and len(node.input) > 1 else None
        if weight is None or readers.get(weight.name, 0) != 1 or len(weight.dims) != 2 or weight.dims[1] < 16:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight).astype(np.float32)
        n_out = w.shape[1]
        k = min(n_out - 1, max(1, int(round(f * n_out))))
        low = np.sort(np.argsort(_column_error_4bit(w, block), kind="stable")[:k])
        high = np.setdiff1d(np.arange(n_out), low)
        order = np.concatenate([low, high])
        position = np.empty(n_out, dtype=np.int32)  # Gather takes int32 indices: half the bytes of int64
        position[order] = np.arange(n_out)
        low_name, high_name = f"{node.name}/int4_part", f"{node.name}/int8_part"
        y_low, y_high, y_cat = (f"{node.output[0]}/{tag}" for tag in ("int4_part", "int8_part", "concat"))
        graph.initializer.remove(weight)
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(w[:, low]), f"{weight.name}_int4_part"),
                numpy_helper.from_array(np.ascontiguousarray(w[:, high]), f"{weight.name}_int8_part"),
                numpy_helper.from_array(position, f"{weight.name}_channel_order"),
            ]
        )
        nodes += [
            helper.make_node("MatMul", [node.input[0], f"{weight.name}_int4_part"], [y_low], name=low_name),
            helper.make_node("MatMul", [node.input[0], f"{weight.name}_int8_part"], [y_high], name=high_name),
            helper.make_node("Concat", [y_low, y_high], [y_cat], name=f"{node.name}/concat", axis=-1),
            helper.make_node(
                "Gather",
                [y_cat, f"{weight.name}_channel_order"],
                list(node.output),
                name=f"{node.name}/order",
                axis=-1,
            ),
        ]
        parts[node.name] = (low_name, high_name)
    del graph.node[:]
    graph.node.extend(nodes)
    return out, parts


def _column_error_4bit(w: np.ndarray, block: int) -> np.ndarray:
    """Per output channel of a [K, N] weight, the relative error of asymmetric 4-bit blocks along K."""
    k, n = w.shape
    size = block
    while size > 16 and size > k:
        size //= 2
    pad = (-k) % size
    cols = np.pad(w, ((0, pad), (0, 0))).T.reshape(n, -1, size)
    lo, hi = cols.min(axis=-1, keepdims=True), cols.max(axis=-1, keepdims=True)
    scale = np.where(hi > lo, (hi - lo) / 15.0, 1.0)
    q = np.clip(np.rint((cols - lo) / scale), 0, 15) * scale + lo
    err = np.sqrt(((q - cols) ** 2).sum(axis=(1, 2)))
    return err / np.maximum(np.sqrt((cols**2).sum(axis=(1, 2))), 1e-12)


# Per-channel axis of each op's weight: MatMul B is [K, N] (a scale per output column), Conv W is
# [C_out, C_in/g, ...] and a Gather table [rows, width] (a scale per output channel or row).
_CHANNEL_AXIS = {"MatMul": 1, "Conv": 0, "Gather": 0}


def _weight_only_int8(model: Any, names: list[str]) -> Any:
    """`model` (not modified) with the weights the nodes `names` read as int8 per channel + DequantizeLinear.

    Symmetric (zero point 0, range +-127). A weight another node also reads (tied embeddings) is shared by
    one DequantizeLinear. The graph's metadata names the session option that folds them at load.
    """
    import onnx
    from onnx import helper, numpy_helper

    if _opset(model) < 13:
        raise UnsupportedFormatError(
            f"weight_only_int8 needs per-channel DequantizeLinear (opset 13 or newer); this graph is opset "
            f"{_opset(model)}"
        )
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    done: dict[str, str] = {}
    dequant: list[Any] = []
    for name in names:
        node = nodes[name]
        weight_name = _weight_of(node, inits)
        if weight_name is None or weight_name in done:
            continue
        tensor = inits[weight_name]
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue  # fp16/bf16 weights: the float type DequantizeLinear would give back differs
        w = numpy_helper.to_array(tensor).astype(np.float32)
        axis = _CHANNEL_AXIS[node.op_type] if w.ndim > 1 else 0
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=reduce) if reduce else np.abs(w)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        graph.initializer.remove(tensor)
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{weight_name}_int8"),
                numpy_helper.from_array(scale, f"{weight_name}_scale"),
            ]
        )
        dequant.append(
            helper.make_node(
                "DequantizeLinear",
                # No zero point: it defaults to 0 of the int8 type (symmetric), a byte per channel saved.
                [f"{weight_name}_int8", f"{weight_name}_scale"],
                [weight_name],
                name=f"{weight_name}_dequantize",
                axis=axis,
            )
        )
        done[weight_name] = name
    nodes_now = list(graph.node)
    del graph.node[:]
    graph.node.extend(dequant + nodes_now)  # the weights' producers first: the graph stays sorted
    set_session_config(out, FOLD_WEIGHTS_CONFIG)
    return out


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _matmul_nbits(model: Any, names: list[str], bits: int, block: int, *, symmetric: bool = True) -> Any:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    wanted = set(names)
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in wanted]
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block,
        is_symmetric=symmetric,
        # 4-bit: int8 activations in the kernel (~3x faster than fp32 compute on CPU, same error). 8-bit
        # (the layers mixed precision keeps higher): float compute, as weight-only int8 (97.7% -> 98.1%
        # top-1 agreement on the zoo's Llama with every layer at 8 bits).
        accuracy_level=4 if bits == 4 else None,
        nodes_to_exclude=others,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    return quantizer.model.model


def _gather_blocks(model: Any, bits_by_node: dict[str, int], block: int) -> None:
    """Gather tables as com.microsoft GatherBlockQuantized: symmetric blocks along the row, in uint8.

    4-bit values are packed two to a byte (low nibble first) with the implicit zero point 8, 8-bit values
    with the implicit zero point 128; one float32 scale per block. Tables another node also reads (tied
    input and output embeddings) stay as they are.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers = _reader_counts(graph)
    new_nodes = []
    changed = False
    for node in graph.node:
        bits = bits_by_node.get(node.name)
        table = inits.get(node.input[0]) if node.op_type == "Gather" and bits else None
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        if table is None or table.data_type != TensorProto.FLOAT or len(table.dims) != 2 or axis != 0:
            new_nodes.append(node)
            continue
        if readers.get(table.name, 0) != 1:
            new_nodes.append(node)
            continue
        rows, width = (int(d) for d in table.dims)
        size = block
        while size > 16 and width % size:
            size //= 2
        if width % size or (bits == 4 and width % 2):
            new_nodes.append(node)
            continue
        data, scales = quantize_blocks(numpy_helper.to_array(table), bits, size)
        q_name, s_name = f"{table.name}_q{bits}", f"{table.name}_scales"
        graph.initializer.remove(table)
        graph.initializer.extend(
            [numpy_helper.from_array(data, q_name), numpy_helper.from_array(scales, s_name)]
        )
        new_nodes.append(
            helper.make_node(
                "GatherBlockQuantized",
                [q_name, node.input[1], s_name],
                list(node.output),
                name=node.name,
                domain="com.microsoft",
                gather_axis=0,
                quantize_axis=1,
                block_size=size,
                bits=bits,
            )
        )
        changed = True
    if changed:
        del graph.node[:]
        graph.node.extend(new_nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _reader_counts(graph: Any) -> dict[str, int]:
    """How many nodes read each tensor name (a weight read by more than one is shared: left as it is)."""
    readers: dict[str, int] = {}
    for node in graph.node:
        for i in node.input:
            readers[i] = readers.get(i, 0) + 1
    return readers


def quantize_blocks(table: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric block quantization of a [rows, width] table along its rows: (uint8 data, float32 scales).

    The layout of GatherBlockQuantized with uint8 data: 4-bit values offset by 8 and packed two per byte
    (element 2i in the low nibble), 8-bit values offset by 128.
    """
    rows, width = table.shape
    qmax = 7 if bits == 4 else 127
    blocks = table.astype(np.float32).reshape(rows, width // block, block)
    scales = np.abs(blocks).max(axis=-1) / qmax
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    q = np.clip(np.rint(blocks / scales[..., None]), -qmax - 1, qmax).astype(np.int16).reshape(rows, width)
    if bits == 4:
        u = (q + 8).astype(np.uint8)
        return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8), scales
    return (q + 128).astype(np.uint8), scales


# ---------------------------------------------------------------------------------------------
# mixed precision


def _mixed(
    handle: ModelHandle, model: Any, names: list[str], build: Any, target: float, method: str
) -> tuple[Any, Any]:
    from onnx import helper

    from tools.evaluation import evaluate
    from tools.sensitivity import Layer, Probe, choose_mixed, group_layers

    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    layers = []
    for name in names:
        weight = inits[_weight_of(nodes[name], inits) or ""]
        numel = int(np.prod(weight.dims))
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(weight.data_type)).itemsize
        layers.append(Layer(name, onnx_module_path(nodes[name], inits), numel * itemsize))
    reference = handle.clone(model=handle.model)  # its own cache: the reference outputs, computed once

    def candidate(high: set[str]) -> ModelHandle:
        return handle.clone(model=build(high), runtime="onnx", format="onnx", device="cpu")

    def probe(h: ModelHandle) -> Probe:
        r = evaluate(h, reference=reference)
        return Probe(
            float(r.accuracy_retained), float(getattr(r, "relative_error", 1.0 - r.cosine_similarity))
        )

    chosen, choice = choose_mixed(
        group_layers(layers), candidate, probe, target, all_high_is_useful=method == "weight_only_int4"
    )
    return chosen.model, choice


def _sized(
    handle: ModelHandle,
    model: Any,
    names: list[str],
    method: str,
    block: int,
    reader: _CalibrationReader | None,
    size_target: float,
    accuracy_target: float | None = None,
) -> tuple[Any, Any]:
    """Per-layer precision (float, 8-bit, 4-bit blocks for weight_only_int4; float or int8 otherwise) that
    fits `size_target` of the handle's size at the least measured cost (tools.sensitivity.choose_for_size)."""
    from onnx import helper

    from tools.evaluation import evaluate
    from tools.sensitivity import Layer, Probe, choose_for_size, group_layers

    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    layers = []
    for name in names:
        weight = inits[_weight_of(nodes[name], inits) or ""]
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(weight.data_type)).itemsize
        layers.append(Layer(name, onnx_module_path(nodes[name], inits), int(np.prod(weight.dims)) * itemsize))
    reference = handle.clone(model=handle.model)
    precisions = ("int8", *SPLIT_PRECISIONS, "int4") if method == "weight_only_int4" else ("int8",)

    def build(assign: dict[str, str]) -> Any:
        eight = [n for n in names if assign.get(n) == "int8"]
        if method == "weight_only_int4":
            graph = _weight_only_sized(model, {n: assign[n] for n in names if n in assign}, block)
        else:
            graph = _apply(model, method, eight, [], block, reader)
        del graph.graph.value_info[:]  # as the result will be: sizes measured here are the file's
        return graph

    def probe(graph: Any) -> Probe:
        r = evaluate(
            handle.clone(model=graph, runtime="onnx", format="onnx", device="cpu"), reference=reference
        )
        return Probe(float(r.accuracy_retained), float(r.relative_error))

    target = int(size_target * handle.model.ByteSize())
    groups = group_layers(layers)
    if method == "weight_only_int4" and accuracy_target is not None:
        # Whole layers first: a split layer runs two MatMuls, a Concat and a Gather (on the eval suite's
        # pendulum MLP, 0.040 ms at batch 1 against 0.032 ms for int8 everywhere); the split only when
        # the whole-layer mix misses the size or the accuracy.
        whole = choose_for_size(groups, ("int8", "int4"), build, probe, lambda g: int(g.ByteSize()), target)
        if whole[1].met and whole[1].accuracy_retained >= accuracy_target:
            return whole
    return choose_for_size(groups, precisions, build, probe, lambda g: int(g.ByteSize()), target)


# ---------------------------------------------------------------------------------------------
# pre-processing


def _preprocess(model: Any) -> tuple[Any, str]:
    """ONNX Runtime's `quant_pre_process` on `model`, with fallbacks; (graph, what was done).

    Symbolic shape inference is tried first on its own (plain, then merging symbolic dimensions): the
    library, when it cannot finish, dumps the graph into the working directory before raising, so it is
    only asked to run it on graphs where it is known to finish.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts: list[tuple[str, dict[str, Any]]] = []
    merge = _symbolic_shapes(model)
    if merge is not None:
        label = (
            "symbolic"
            + (" (merged dimensions)" if merge else "")
            + " and ONNX shape inference, graph fusions"
        )
        attempts.append((label, {"auto_merge": merge}))
    attempts += [
        ("ONNX shape inference and graph fusions", {"skip_symbolic_shape": True}),
        (
            "ONNX shape inference only (graph fusions failed)",
            {"skip_symbolic_shape": True, "skip_optimization": True},
        ),
    ]
    problems: list[str] = [] if merge is not None else ["symbolic shape inference incomplete"]
    with tempfile.TemporaryDirectory(prefix="robopt-pre-") as tmp, _quiet_ort():
        source = Path(tmp) / "in.onnx"
        onnx.save_model(model, str(source))
        for i, (label, kwargs) in enumerate(attempts):
            target = Path(tmp) / f"pre{i}.onnx"
            try:
                quant_pre_process(str(source), str(target), **kwargs)
                out = onnx.load(str(target), load_external_data=False)
            except Exception as exc:  # noqa: BLE001 - each failure falls back to a lighter step
                problems.append(f"{type(exc).__name__}: {str(exc)[:120]}".strip())
                continue
            if [i.name for i in out.graph.input] != [i.name for i in model.graph.input] or [
                o.name for o in out.graph.output
            ] != [o.name for o in model.graph.output]:
                problems.append("the pre-processed graph renamed inputs or outputs")
                continue
            _name_nodes(out.graph)
            note = f" ({'; '.join(problems)})" if problems else ""
            return out, label + note
    return model, f"skipped ({'; '.join(problems)})"


def _symbolic_shapes(model: Any) -> bool | None:
    """Whether ONNX Runtime's symbolic shape inference completes on `model`: False plainly, True when it
    needs `auto_merge`, None when it does not complete."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    for merge in (False, True):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        try:
            inference = SymbolicShapeInference(2**31 - 1, merge, False, 0)
            inference._preprocess(copy)
            complete = False
            while inference.run_:
                complete = inference._infer_impl()
        except Exception:  # noqa: BLE001 - an op it does not know, an internal assertion
            complete = False
        if complete:
            return merge
    return None


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """ONNX Runtime's quantizers log advice and progress; keep the caller's logging as it was.

    Importing `matmul_nbits_quantizer` calls `logging.basicConfig(level=INFO)`, which would leave the
    root logger printing every INFO record of the process: its handlers and level are put back.
    """

    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.addFilter(keep)
    root.setLevel(max(level, logging.WARNING))
    noisy = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeFilter(keep)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
        for lg, old in zip(noisy, levels, strict=True):
            lg.setLevel(old)


_NOISY_LOGGERS = (
    "onnxruntime.quantization.matmul_nbits_quantizer",
    "onnxruntime.quantization.shape_inference",
    "onnxruntime.quantization.quant_utils",
)


# ---------------------------------------------------------------------------------------------
# fp16


def _onnx_fp16(
    handle: ModelHandle,
    model: Any,
    include: list[str] | None,
    exclude: list[str] | None,
    layer_types: list[str] | None,
    seed: int,
    step: dict[str, Any],
) -> ModelHandle:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    blocked: list[str] = []
    result = step["result"]
    result["kept_float"] = []
    if include or exclude or layer_types:
        op_types = set(_onnx_op_types("static_int8", layer_types)) if layer_types else None
        inits = {t.name for t in model.graph.initializer}
        for node in model.graph.node:
            if (op_types is not None and node.op_type not in op_types) or not _selected(
                _onnx_node_names(node, inits), include, exclude
            ):
                blocked.append(node.name)
        if len(blocked) == len(model.graph.node):
            _no_layers("fp16", layer_types or ["any"], include, exclude)
        kept = [n for n in _weight_nodes(model, _onnx_op_types("static_int8", None)) if n.name in blocked]
        result["kept_float"] = [onnx_module_path(n, inits) or n.name for n in kept]
    inputs = _sample_inputs(handle, 8, seed)
    islands = sorted(_fp16_overflow_nodes(model, inputs) - set(blocked)) if inputs is not None else []
    node_block = sorted(set(blocked) | set(islands)) or None
    # keep_io_types: callers keep feeding float32 and get float32 back.
    converted = _fp16(model, node_block)
    fp32_ops: list[str] = []
    if inputs is not None:
        cosine = _fidelity(model, converted, inputs)
        if cosine < _FP16_MIN_COSINE:
            safer = _fp16(model, node_block, [*DEFAULT_OP_BLOCK_LIST, *_FP16_SENSITIVE_OPS])
            safer_cosine = _fidelity(model, safer, inputs)
            if safer_cosine > cosine:
                converted, cosine = safer, safer_cosine
                present = {n.op_type for n in model.graph.node}
                fp32_ops = [o for o in _FP16_SENSITIVE_OPS if o in present]
        result["fp16_cosine"] = round(cosine, 6)
    else:
        result["fp32_islands_note"] = "no input signature: fp16 overflow was not checked"
    del converted.graph.value_info[:]
    _toposort(converted.graph)  # the converter appends the input casts last; checkers want them first
    label = "all" if not node_block else f"all but {len(node_block)} nodes"
    result.update(backend="onnxruntime", layers=label, fp32_islands=islands, fp32_ops=fp32_ops)
    return handle.with_step(converted, step)


def _fp16(model: Any, node_block: list[str] | None, op_block: list[str] | None = None) -> Any:
    """`convert_float_to_float16(keep_io_types=True)`, then the fp32 islands made whole.

    The converter casts every blocked node's output to fp16 and back to fp32 before the next blocked node,
    so a value beyond fp16's range passed from one float32 node to the next would still overflow on the
    way: those Cast pairs are removed, the next node reads the float32 value itself.
    """
    from onnx import TensorProto, helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(
        model, keep_io_types=True, node_block_list=node_block, op_block_list=op_block
    )
    blocked_ops = set(op_block or [])
    float32 = {
        o
        for n in converted.graph.node
        if n.name in set(node_block or []) or n.op_type in blocked_ops
        for o in n.output
    }
    float32 |= {i.name for i in converted.graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}

    def cast_to(node: Any) -> int | None:
        return next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == "to"), None)

    producer = {o: n for n in converted.graph.node for o in n.output}
    rename: dict[str, str] = {}
    dropped: set[int] = set()
    for node in converted.graph.node:
        if node.op_type != "Cast" or cast_to(node) != TensorProto.FLOAT:
            continue
        first = producer.get(node.input[0])
        if first is None or first.op_type != "Cast" or cast_to(first) != TensorProto.FLOAT16:
            continue
        if first.input[0] in float32:
            rename[node.output[0]] = first.input[0]
            dropped.add(id(node))
    if not rename:
        return converted
    outputs = {o.name for o in converted.graph.output}
    kept = []
    for node in converted.graph.node:
        if id(node) in dropped and node.output[0] not in outputs:
            continue
        if id(node) in dropped:
            kept.append(node)
            continue
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        kept.append(node)
    used = {i for n in kept for i in n.input} | outputs
    kept = [n for n in kept if n.op_type != "Cast" or any(o in used for o in n.output)]
    del converted.graph.node[:]
    converted.graph.node.extend(kept)
    return converted


def _toposort(graph: Any) -> None:
    """Order `graph.node` so that every node comes after the producers of its inputs (stable)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[Any] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in known for i in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a dangling input: leave the remainder as it was
            ordered.extend(rest)
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _sample_inputs(handle: ModelHandle, samples: int, seed: int) -> dict[str, np.ndarray] | None:
    """A few inputs to probe the model with: the evaluation data's first samples, else synthesized."""
    try:
        reader = _CalibrationReader(handle, samples, seed, batch_size=samples)
    except Exception:  # noqa: BLE001 - no signature and no data: nothing to probe with
        return None
    return reader.get_next()


def _session(model: Any, optimize: bool = True) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for key, value in session_config(model).items():
        opts.add_session_config_entry(key, value)
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _fp16_overflow_nodes(model: Any, inputs: dict[str, np.ndarray]) -> set[str]:
    """Nodes that produce or read a float32 tensor beyond fp16's range on `inputs` (they stay float32)."""
    import onnx
    from onnx import TensorProto, shape_inference

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    try:
        typed = shape_inference.infer_shapes(probe)
    except Exception:  # noqa: BLE001 - without types, only the graph outputs can be probed
        typed = probe
    outputs = {o.name for o in probe.graph.output}
    for value in typed.graph.value_info:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT and value.name not in outputs:
            probe.graph.output.append(value)
            outputs.add(value.name)
    try:
        session = _session(probe, optimize=False)
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, inputs)
    except Exception:  # noqa: BLE001 - a probe that does not run tells nothing; convert as is
        return set()
    over = {
        name
        for name, value in zip(names, values, strict=True)
        if isinstance(value, np.ndarray)
        and value.dtype.kind == "f"
        and value.size
        and float(np.nanmax(np.abs(value))) > _FP16_SAFE
    }
    return {node.name for node in model.graph.node if over & set(node.output) or over & set(node.input)}


def _fidelity(reference: Any, candidate: Any, inputs: dict[str, np.ndarray]) -> float:
    """Cosine of the candidate's first output to the reference's (0 when not finite)."""
    try:
        ref = np.asarray(_session(reference).run(None, inputs)[0], dtype=np.float64).reshape(-1)
        out = np.asarray(_session(candidate).run(None, inputs)[0], dtype=np.float64).reshape(-1)
    except Exception:  # noqa: BLE001 - a graph that does not run has no fidelity
        return 0.0
    if not np.isfinite(out).all():
        return 0.0
    denom = float(np.linalg.norm(ref) * np.linalg.norm(out))
    return float(ref @ out / denom) if denom > 0 else float(np.allclose(ref, out))


class _CalibrationReader:
    """Feeds ONNX Runtime's calibrator batches from the evaluation data, or synthesized inputs."""

    def __init__(self, handle: ModelHandle, samples: int, seed: int, batch_size: int = 8) -> None:
        from tools.loading import require_inputs

        specs = require_inputs(handle)
        data = handle.eval_data
        if data is not None and data.num_samples > 0:
            check_inputs(specs, data.inputs)
            inputs = slice_batch(data.inputs, 0, min(samples, data.num_samples))
            self.source = "eval_data"
        else:
            inputs = synthesize_inputs(specs, batch_size=samples, seed=seed)
            self.source = "synthesized"
        total = next(iter(inputs.values())).shape[0]
        self._batches = [
            {k: np.ascontiguousarray(v[start : start + batch_size]) for k, v in inputs.items()}
            for start in range(0, total, batch_size)
        ]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return self._batches[self._next - 1]

    def rewind(self) -> None:
        self._next = 0
