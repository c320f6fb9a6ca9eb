"""`inspect_model`: what a model is made of, as the planner and the API see it.

Counts come from the weights actually held (quantized weights count at their stored width), FLOPs
from one forward pass at batch 1 (`FlopCounterMode` for torch, MatMul/Gemm/Conv shapes for ONNX).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from tools.arguments import check_arguments
from tools.errors import InvalidArgumentError
from tools.exporting import serialized_size
from tools.handle import InputSpec, ModelHandle

QUANTIZABLE_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")
PRUNABLE_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")
_ONNX_WEIGHT_OPS = ("MatMul", "Gemm", "Conv")


class LayerInfo(BaseModel):
    name: str
    type: str
    block: str = Field(
        "", description="Top-level module (torch) or the first segment of the node name (ONNX)."
    )
    parameters: int
    bytes: int
    dtype: str
    shape: list[int] = Field(default_factory=list, description="Shape of the layer's main weight.")


class ModelProfile(BaseModel):
    format: str
    runtime: str
    architecture: str | None = None
    total_parameters: int
    parameters_by_layer_type: dict[str, int]
    bytes_by_layer_type: dict[str, int]
    parameters_by_block: dict[str, int] = Field(
        description="Per top-level module (torch) or name prefix (ONNX)."
    )
    bytes_by_block: dict[str, int]
    dtypes: dict[str, int] = Field(description="Parameter count per storage dtype.")
    inputs: list[InputSpec]
    flops: int | None = Field(description="Floating point operations of one forward pass at batch 1.")
    quantizable_layers: list[str]
    prunable_layers: list[str]
    structured_prunable_layers: list[str] | None = Field(
        None,
        description="ONNX graphs: the layers whose output channels structured pruning can remove (MLP "
        "hidden and conv channel groups); empty when none can; None for torch models (every Linear/Conv).",
    )
    zero_fraction: float = Field(description="Fraction of weight values that are exactly zero.")
    size_bytes: int = Field(description="Bytes of the model in its natural format (see tools.exporting).")
    layers: list[LayerInfo] = Field(default_factory=list)
    recipe: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


def inspect_model(handle: ModelHandle) -> ModelProfile:
    """Profile `handle` without changing it."""
    if not isinstance(handle, ModelHandle):
        raise InvalidArgumentError(f"inspect_model needs a model handle, got {type(handle).__name__}")
    check_arguments("inspect_model")
    structured: list[str] | None = None
    if handle.runtime == "onnx":
        layers, quantizable, prunable, zeros, flops, notes = _onnx_layers(handle)
        structured = _onnx_structured_layers(handle, notes)
    else:
        layers, quantizable, prunable, zeros, flops, notes = _torch_layers(handle)
    by_type: dict[str, int] = defaultdict(int)
    bytes_type: dict[str, int] = defaultdict(int)
    by_block: dict[str, int] = defaultdict(int)
    bytes_block: dict[str, int] = defaultdict(int)
    dtypes: dict[str, int] = defaultdict(int)
    for layer in layers:
        block = layer.block or _block_of(layer.name)
        by_type[layer.type] += layer.parameters
        bytes_type[layer.type] += layer.bytes
        by_block[block] += layer.parameters
        bytes_block[block] += layer.bytes
        dtypes[layer.dtype] += layer.parameters
    total = sum(layer.parameters for layer in layers)
    return ModelProfile(
        format=handle.format,
        runtime=handle.runtime,
        architecture=handle.architecture.name if handle.architecture else None,
        total_parameters=total,
        parameters_by_layer_type=dict(by_type),
        bytes_by_layer_type=dict(bytes_type),
        parameters_by_block=dict(by_block),
        bytes_by_block=dict(bytes_block),
        dtypes=dict(dtypes),
        inputs=list(handle.inputs),
        flops=flops,
        quantizable_layers=quantizable,
        prunable_layers=prunable,
        structured_prunable_layers=structured,
        zero_fraction=zeros,
        size_bytes=serialized_size(handle),
        layers=layers,
        recipe=list(handle.recipe),
        notes=notes,
    )


def _block_of(name: str) -> str:
    parts = [p for p in name.replace("/", ".").split(".") if p]
    return parts[0] if parts else "(root)"


# ---------------------------------------------------------------------------------------------
# torch


def _tensor_bytes(t: Any) -> int:
    """Stored bytes, looking inside tensor subclasses (torchao) at their inner tensors."""
    if hasattr(t, "__tensor_flatten__") and type(t).__name__ not in ("Tensor", "Parameter"):
        names, _ctx = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names if getattr(t, n, None) is not None)
    return int(t.numel() * t.element_size())


def _storage_dtype(t: Any) -> str:
    if hasattr(t, "__tensor_flatten__") and type(t).__name__ not in ("Tensor", "Parameter"):
        names, _ctx = t.__tensor_flatten__()
        inner = [getattr(t, n) for n in names if getattr(t, n, None) is not None]
        if inner:
            return _storage_dtype(max(inner, key=lambda x: x.numel()))
    return str(t.dtype).removeprefix("torch.")


def _module_weights(module: Any) -> list[tuple[str, Any, bool]]:
    """(name, tensor, is_parameter) held directly by a module, including torch.ao packed weights."""
    out: list[tuple[str, Any, bool]] = []
    packed = getattr(module, "_packed_params", None)
    if packed is not None and hasattr(packed, "_weight_bias"):
        weight, bias = packed._weight_bias()
        out.append(("weight", weight, True))
        if bias is not None:
            out.append(("bias", bias, True))
        return out
    out.extend((n, p, True) for n, p in module.named_parameters(recurse=False))
    out.extend((n, b, False) for n, b in module.named_buffers(recurse=False) if b is not None)
    return out


def _is_plain_float(t: Any) -> bool:
    import torch

    return type(t) in (torch.Tensor, torch.nn.Parameter) and t.is_floating_point()


def _torch_layers(
    handle: ModelHandle,
) -> tuple[list[LayerInfo], list[str], list[str], float, int | None, list[str]]:
    import torch

    model = handle.model
    layers: list[LayerInfo] = []
    quantizable: list[str] = []
    prunable: list[str] = []
    zeros = total_weights = 0
    notes: list[str] = []
    with torch.no_grad():
        for name, module in model.named_modules():
            tensors = _module_weights(module)
            if not tensors:
                continue
            type_name = type(module).__name__
            if isinstance(model, torch.jit.ScriptModule):
                type_name = getattr(module, "original_name", type_name)
            params = [t for _n, t, is_param in tensors if is_param]
            main = next(
                (t for n, t, is_param in tensors if n == "weight"), params[0] if params else tensors[0][1]
            )
            layers.append(
                LayerInfo(
                    name=name or "(root)",
                    type=type_name,
                    block=_block_of(name),
                    parameters=sum(int(t.numel()) for t in params),
                    bytes=sum(_tensor_bytes(t) for _n, t, _p in tensors),
                    dtype=_storage_dtype(main),
                    shape=[int(d) for d in main.shape],
                )
            )
            weight = dict((n, t) for n, t, _p in tensors).get("weight")
            if weight is not None and _is_plain_float(weight):
                zeros += int((weight == 0).sum())
                total_weights += int(weight.numel())
                if type_name in QUANTIZABLE_TYPES:
                    quantizable.append(name)
                if type_name in PRUNABLE_TYPES:
                    prunable.append(name)
    flops = _torch_flops(handle, notes)
    return layers, quantizable, prunable, zeros / total_weights if total_weights else 0.0, flops, notes


def _torch_flops(handle: ModelHandle, notes: list[str]) -> int | None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tools.runtime import synthesize_inputs, to_tensors, torch_forward

    if not handle.inputs:
        notes.append("FLOPs unknown: the input signature is unknown")
        return None
    try:
        tensors = to_tensors(handle, synthesize_inputs(handle.inputs, batch_size=1, seed=0))
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            torch_forward(handle, tensors)
        flops = int(counter.get_total_flops())
    except Exception as exc:  # noqa: BLE001 - a profile without FLOPs is still useful
        notes.append(f"FLOPs not counted: {str(exc)[:200]}")
        return None
    if any((step.get("result") or {}).get("backend") == "torch.ao" for step in handle.recipe):
        notes.append("FLOPs exclude int8 kernels that the counter does not see (torch.ao quantized layers)")
    return flops


# ---------------------------------------------------------------------------------------------
# ONNX


def _is_onnx_float(np_dtype: Any) -> bool:
    """float16/32/64, and the ml_dtypes floats (bfloat16, float8_*) numpy sees as raw 'V' records."""
    return np_dtype.kind == "f" or (np_dtype.kind == "V" and np_dtype.name.startswith(("bfloat16", "float8")))


def _onnx_layers(
    handle: ModelHandle,
) -> tuple[list[LayerInfo], list[str], list[str], float, int | None, list[str]]:
    from onnx import helper, numpy_helper

    graph = handle.model.graph
    inits = {t.name: t for t in graph.initializer}
    consumer: dict[str, Any] = {}
    readers: dict[str, Any] = {}
    for node in graph.node:
        for i in node.input:
            readers.setdefault(i, node)
            if i in inits and i not in consumer:
                consumer[i] = node
    # A QDQ weight feeds DequantizeLinear; the layer it belongs to is the node reading that output.
    for name, node in list(consumer.items()):
        if node.op_type == "DequantizeLinear" and node.output[0] in readers:
            consumer[name] = readers[node.output[0]]
    layers: list[LayerInfo] = []
    quantizable: list[str] = []
    prunable: list[str] = []
    zeros = total_weights = 0
    for name, tensor in inits.items():
        np_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        is_float = _is_onnx_float(np_dtype)
        if (np_dtype.kind not in "iu" and not is_float) or np_dtype == np.int64:
            continue  # shapes, axes and other int64 constants are not weights
        numel = int(np.prod(tensor.dims)) if tensor.dims else 1
        node = consumer.get(name)
        layers.append(
            LayerInfo(
                name=name,
                type=node.op_type if node is not None else "Initializer",
                block=_block_of(node.name if node is not None and node.name.startswith("/") else name),
                parameters=numel,
                bytes=numel * np_dtype.itemsize,
                dtype=str(np_dtype),
                shape=[int(d) for d in tensor.dims],
            )
        )
        if is_float and numel > 1 and node is not None and node.op_type in _ONNX_WEIGHT_OPS:
            arr = numpy_helper.to_array(tensor)
            if arr.ndim >= 2:
                zeros += int((arr == 0).sum())
                total_weights += arr.size
                if node.name not in quantizable:
                    quantizable.append(node.name)
                    prunable.append(node.name)
    notes: list[str] = []
    flops = _onnx_flops(handle.model, notes)
    return layers, quantizable, prunable, zeros / total_weights if total_weights else 0.0, flops, notes


def _onnx_structured_layers(handle: ModelHandle, notes: list[str]) -> list[str]:
    """Producers of the channel groups tools.onnx_pruning can remove (reads no weight data)."""
    from tools.onnx_pruning import onnx_channel_groups

    try:
        groups = onnx_channel_groups(handle.model)["groups"]
    except Exception as exc:  # noqa: BLE001 - a graph the analysis does not follow: no structured pruning
        notes.append(f"structured pruning: channel groups not analysed ({str(exc)[:120]})")
        return []
    if not groups:
        notes.append(
            "structured pruning: no prunable channel group (outputs, residual streams, norms, attention "
            "reshapes); only magnitude pruning applies"
        )
    return list(dict.fromkeys(p for g in groups for p in g["producers"]))


def _onnx_flops(model: Any, notes: list[str]) -> int | None:
    """2*M*N*K for MatMul/Gemm (and their int8 forms), 2*out*Cin/groups*kernel for Conv, at batch 1."""
    import onnx
    from onnx import helper, shape_inference

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in copy.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    try:
        inferred = shape_inference.infer_shapes(copy)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"FLOPs not counted: shape inference failed ({str(exc)[:120]})")
        return None
    shapes: dict[str, list[int]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [int(d.dim_value) for d in dims]
    for t in inferred.graph.initializer:
        shapes[t.name] = [int(d) for d in t.dims]
    total = 0
    missing = 0
    for node in inferred.graph.node:
        op = node.op_type
        if op not in (
            "MatMul",
            "Gemm",
            "MatMulInteger",
            "QLinearMatMul",
            "Conv",
            "ConvInteger",
            "QLinearConv",
        ):
            continue
        out = shapes.get(node.output[0])
        a_index = 0
        b_index = 3 if op.startswith("QLinear") else 1
        a, b = shapes.get(node.input[a_index]), shapes.get(node.input[b_index])
        if out is None or a is None or b is None:
            missing += 1
            continue
        if "Conv" in op:
            attrs = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            groups = int(attrs.get("group", 1))
            kernel = int(np.prod(b[2:])) if len(b) > 2 else 1
            total += 2 * int(np.prod(out)) * (a[1] // groups) * kernel
        else:
            attrs = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            k = a[-2] if op == "Gemm" and attrs.get("transA", 0) else a[-1]
            total += 2 * int(np.prod(out)) * k
    if missing:
        notes.append(f"FLOPs of {missing} node(s) not counted (shapes unknown)")
    return total
