"""ONNX Runtime quantization of ONNX graphs: the ONNX backend of `tools.quantization.quantize`.

- dynamic_int8: ONNX Runtime `quantize_dynamic` (Gemm rewritten to MatMul + Add first).
- static_int8: ONNX Runtime QDQ `quantize_static`, calibrated on the evaluation data (else synthesized
  inputs).
- fp16: `onnxruntime.transformers.float16.convert_float_to_float16` with float32 inputs and outputs.

Layer selection: `include` / `exclude` patterns match the node name, its weight initializers and the torch
module the node was exported from (see `onnx_layer_names`). The input handle is never modified.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tools.errors import UnsupportedFormatError
from tools.handle import ModelHandle
from tools.runtime import check_inputs, slice_batch, synthesize_inputs
from tools.selection import no_layers as _no_layers
from tools.selection import selected as _selected

ONNX_METHODS = ("dynamic_int8", "static_int8", "fp16")

# torch layer types -> ONNX op types.
_ONNX_OPS: dict[str, tuple[str, ...]] = {
    "Linear": ("MatMul", "Gemm"),
    "Conv1d": ("Conv",),
    "Conv2d": ("Conv",),
    "Conv3d": ("Conv",),
}
_ONNX_DEFAULT_OPS: dict[str, tuple[str, ...]] = {
    "dynamic_int8": ("MatMul",),  # Gemm is rewritten to MatMul + Add first; ConvInteger is slow on CPU
    "static_int8": ("MatMul", "Gemm", "Conv"),
}


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


def _weight_nodes(model: Any, op_types: Iterable[str]) -> list[Any]:
    inits = {t.name for t in model.graph.initializer}
    wanted = set(op_types)
    return [n for n in model.graph.node if n.op_type in wanted and any(i in inits for i in n.input)]


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
            ops.append(t)  # an ONNX op type given directly (MatMul, Gemm, Conv)
    if method == "dynamic_int8":
        ops = ["MatMul" if o == "Gemm" else o for o in ops]
    return tuple(dict.fromkeys(ops))


def quantize_onnx(
    handle: ModelHandle,
    method: str,
    include: list[str] | None,
    exclude: list[str] | None,
    layer_types: list[str] | None,
    calibration_samples: int,
    seed: int,
    step: dict[str, Any],
) -> ModelHandle:
    import onnx

    if method in ("weight_only_int8", "weight_only_int4", "bnb_int8", "bnb_nf4"):
        raise UnsupportedFormatError(
            f"{method} applies to torch models; for an ONNX model use dynamic_int8, static_int8 or fp16",
        )
    if method == "bf16":
        raise UnsupportedFormatError(
            "bf16 is not offered for ONNX models (ONNX Runtime's CPU kernels lack bfloat16); use fp16",
        )
    model = onnx.ModelProto()
    model.CopyFrom(handle.model)
    _name_nodes(model.graph)
    if method == "fp16":
        return _onnx_fp16(handle, model, include, exclude, layer_types, step)

    if method == "dynamic_int8":
        _gemm_to_matmul(model)
    op_types = _onnx_op_types(method, layer_types)
    names = onnx_layer_names(model, op_types, include, exclude)
    if not names:
        _no_layers(method, op_types, include, exclude)
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    with tempfile.TemporaryDirectory(prefix="robopt-quant-") as tmp, _quiet_preprocess_advice():
        source, target = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save_model(model, str(source))
        if method == "dynamic_int8":
            quantize_dynamic(
                source,
                target,
                op_types_to_quantize=list(op_types),
                nodes_to_quantize=names,
                weight_type=QuantType.QInt8,
                per_channel=False,
                # 7-bit weights: x86 without VNNI saturates u8*s8 products (vpmaddubsw); full range gave
                # 13% relative output error on the test MLP, reduced range 1.2%.
                reduce_range=True,
            )
        else:
            reader = _CalibrationReader(handle, calibration_samples, seed)
            quantize_static(
                source,
                target,
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                nodes_to_quantize=names,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
            step["result"]["calibration_source"] = reader.source
        quantized = onnx.load(str(target), load_external_data=False)
    step["result"].update(
        backend="onnxruntime", layers=names, kept_float=_onnx_kept_float(model, op_types, names)
    )
    return handle.with_step(quantized, step, runtime="onnx", format="onnx", device="cpu")


@contextlib.contextmanager
def _quiet_preprocess_advice() -> Iterator[None]:
    """ONNX Runtime logs "consider pre-processing" on the root logger for every call; drop just that."""

    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _onnx_fp16(
    handle: ModelHandle,
    model: Any,
    include: list[str] | None,
    exclude: list[str] | None,
    layer_types: list[str] | None,
    step: dict[str, Any],
) -> ModelHandle:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    blocked = []
    step["result"]["kept_float"] = []
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
        step["result"]["kept_float"] = [onnx_module_path(n, inits) or n.name for n in kept]
    # keep_io_types: callers keep feeding float32 and get float32 back.
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked or None)
    step["result"].update(
        backend="onnxruntime", layers="all" if not blocked else f"all but {len(blocked)} nodes"
    )
    return handle.with_step(converted, step)


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
