"""`quantize`: lower-precision weights (and activations) for torch and ONNX models.

Which library does what, chosen by what really shrinks the file and runs on the device:

- dynamic_int8: torch on CPU: torch.ao `quantize_dynamic` (fbgemm/x86 kernels; torchao's int8
  dynamic path measured ~10x slower on CPU); torch on CUDA: torchao
  `Int8DynamicActivationInt8WeightConfig`; ONNX: ONNX Runtime `quantize_dynamic` (Gemm rewritten to
  MatMul + Add first). TorchScript and pt2 models are exported to ONNX first.
- weight_only_int8 / weight_only_int4: torchao `Int8WeightOnlyConfig` / `Int4WeightOnlyConfig`
  (tinygemm packing, CUDA only); torch nn.Modules only.
- bnb_int8 / bnb_nf4: bitsandbytes `Linear8bitLt` / `Linear4bit` swapped in; CUDA only.
- fp16 / bf16: a cast (excluded layers stay fp32 behind casts); ONNX: fp16 conversion only.
- static_int8: ONNX Runtime QDQ `quantize_static`, calibrated on the evaluation data (else
  synthesized inputs); torch models are exported to ONNX first.

Layer selection: `layer_types` (module class names such as "Linear", "Conv2d", or ONNX op types),
`include` / `exclude` (fnmatch patterns on torch module qualified names as `inspect_model` reports them;
on ONNX graphs, including torch models exported for static_int8 or backend="onnxruntime", they match
the node name, its weight initializers and the torch module the node was exported from, so
`exclude=["head"]` keeps the head in float on every path). The step result's `kept_float` lists the
candidate layers left in full precision. The input handle is never modified.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, get_args

import numpy as np

from tools.arguments import QuantMethod
from tools.errors import (
    DependencyMissingError,
    InvalidArgumentError,
    UnknownMethodError,
    UnsupportedDeviceError,
    UnsupportedFormatError,
)
from tools.handle import ModelHandle, copy_model
from tools.runtime import check_inputs, slice_batch, synthesize_inputs

METHODS: tuple[str, ...] = get_args(QuantMethod)
GPU_ONLY = ("weight_only_int4", "bnb_int8", "bnb_nf4")
BACKENDS = ("auto", "torch", "onnxruntime")
ONNX_METHODS = ("dynamic_int8", "static_int8", "fp16")
INT4_GROUP_SIZE = 128

# Default layer types per method (torch module class names).
_DEFAULT_TYPES: dict[str, tuple[str, ...]] = {
    "dynamic_int8": ("Linear",),
    "weight_only_int8": ("Linear",),
    "weight_only_int4": ("Linear",),
    "bnb_int8": ("Linear",),
    "bnb_nf4": ("Linear",),
    "static_int8": ("Linear", "Conv1d", "Conv2d"),
}
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


def quantize(
    handle: ModelHandle,
    method: str,
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    layer_types: list[str] | None = None,
    calibration_samples: int = 64,
    seed: int = 0,
    backend: str = "auto",
) -> ModelHandle:
    """A new handle with `method` applied to the selected layers; `handle` is left untouched.

    The recipe step holds the arguments (replayable as `quantize(h, **step minus tool/result)`) and a
    `result` dict: the library used, the layers quantized, whether the model went through ONNX.
    `backend`: "auto" keeps the model's runtime (torch.ao / torchao / bitsandbytes for torch modules,
    ONNX Runtime for ONNX graphs); "onnxruntime" exports a torch model to ONNX first and quantizes it
    with ONNX Runtime (dynamic_int8, static_int8, fp16). On the 2-core CPU of the test machine ONNX
    Runtime's dynamic int8 ran the 0.3 M-parameter MLP ~7x faster than torch eager fp32 at batch 1,
    where torch.ao's int8 was slower than fp32; "torch" insists on a torch module.
    """
    if method not in METHODS:
        raise UnknownMethodError(
            f"unknown quantization method '{method}'; choose one of {', '.join(METHODS)}"
        )
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if calibration_samples < 1:
        raise InvalidArgumentError(f"calibration_samples must be at least 1, got {calibration_samples}")
    step: dict[str, Any] = {
        "tool": "quantize",
        "method": method,
        "include": list(include) if include else None,
        "exclude": list(exclude) if exclude else None,
        "layer_types": list(layer_types) if layer_types else None,
        "seed": seed,
    }
    if backend != "auto":
        step["backend"] = backend
    if method == "static_int8":
        step["calibration_samples"] = calibration_samples
    if method in GPU_ONLY:
        _require_cuda(method)
    step["result"] = {}

    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    if handle.runtime == "onnx" and backend == "torch":
        raise UnsupportedFormatError("an ONNX model is quantized with ONNX Runtime; use backend 'auto'")
    if handle.runtime == "torch" and backend == "onnxruntime":
        if method not in ONNX_METHODS:
            raise UnsupportedFormatError(
                f"ONNX Runtime does not offer {method}; it offers {', '.join(ONNX_METHODS)}"
            )
        handle = _as_onnx_handle(handle)
        step["result"]["exported_to_onnx"] = True
    if handle.runtime == "onnx":
        return _quantize_onnx(handle, method, include, exclude, layer_types, calibration_samples, seed, step)
    if _is_module_tree(handle.model):
        return _quantize_torch(handle, method, include, exclude, layer_types, calibration_samples, seed, step)
    # TorchScript and torch.export modules hold no swappable nn.Linear: go through ONNX for int8.
    if method in ("fp16", "bf16"):
        return _cast_whole(handle, method, include, exclude, layer_types, step)
    if method in ("dynamic_int8", "static_int8"):
        onnx_handle = _as_onnx_handle(handle)
        step["result"]["exported_to_onnx"] = True
        return _quantize_onnx(
            onnx_handle, method, include, exclude, layer_types, calibration_samples, seed, step
        )
    raise UnsupportedFormatError(
        f"{method} needs the model's Python modules, which a {handle.format} file does not have; upload the "
        "state dict with its architecture, or use dynamic_int8 / static_int8 (they go through ONNX)",
    )


# ---------------------------------------------------------------------------------------------
# selection


def _matches(name: str, patterns: list[str] | None) -> bool:
    return bool(patterns) and any(fnmatch.fnmatchcase(name, p) for p in patterns or [])


def _selected(names: Iterable[str], include: list[str] | None, exclude: list[str] | None) -> bool:
    names = list(names)
    if include and not any(_matches(n, include) for n in names):
        return False
    return not (exclude and any(_matches(n, exclude) for n in names))


def _require_cuda(method: str) -> None:
    import torch

    if not torch.cuda.is_available():
        alternatives = "dynamic_int8, weight_only_int8, fp16, bf16 or static_int8"
        raise UnsupportedDeviceError(
            f"{method} needs a CUDA GPU and this machine has none; on CPU use {alternatives}",
        )


def _is_module_tree(model: Any) -> bool:
    """A plain nn.Module whose layers can be swapped (not TorchScript, not a torch.export graph)."""
    import torch

    if isinstance(model, torch.jit.ScriptModule) or not isinstance(model, torch.nn.Module):
        return False
    return not (
        isinstance(model, torch.fx.GraphModule)
        and not any(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for m in model.modules())
    )


def torch_layer_names(
    model: Any, types: Iterable[str], include: list[str] | None, exclude: list[str] | None
) -> list[str]:
    """Qualified names of modules whose class name is in `types` and that pass include/exclude."""
    wanted = set(types)
    return [
        name
        for name, module in model.named_modules()
        if name and type(module).__name__ in wanted and _selected([name], include, exclude)
    ]


def _no_layers(
    method: str, types: Iterable[str], include: list[str] | None, exclude: list[str] | None
) -> None:
    raise InvalidArgumentError(
        f"no layer to quantize with {method}: no {'/'.join(sorted(set(types)))} layer matches "
        f"include={include} exclude={exclude}",
    )


# ---------------------------------------------------------------------------------------------
# torch


def _quantize_torch(
    handle: ModelHandle,
    method: str,
    include: list[str] | None,
    exclude: list[str] | None,
    layer_types: list[str] | None,
    calibration_samples: int,
    seed: int,
    step: dict[str, Any],
) -> ModelHandle:
    import torch

    if method == "static_int8":
        onnx_handle = _as_onnx_handle(handle)
        step["result"]["exported_to_onnx"] = True
        return _quantize_onnx(
            onnx_handle, method, include, exclude, layer_types, calibration_samples, seed, step
        )
    if method in ("fp16", "bf16"):
        return _cast_whole(handle, method, include, exclude, layer_types, step)

    types = tuple(layer_types) if layer_types else _DEFAULT_TYPES[method]
    unsupported = set(types) - {"Linear"}
    if unsupported:
        raise InvalidArgumentError(
            f"{method} quantizes Linear layers only; {sorted(unsupported)} are not supported "
            "(use static_int8 for convolutions)",
        )
    names = torch_layer_names(handle.model, types, include, exclude)
    if not names:
        _no_layers(method, types, include, exclude)
    model = copy_model(handle.model).eval()
    device = handle.device
    if method == "dynamic_int8" and not device.startswith("cuda"):
        model = _torch_ao_dynamic(model, names)
        backend = "torch.ao"
    elif method in ("dynamic_int8", "weight_only_int8", "weight_only_int4"):
        if method == "weight_only_int4":
            device = device if device.startswith("cuda") else "cuda"
            model = model.to(device=device, dtype=torch.bfloat16)
            # tinygemm packs weights in tiles: K a multiple of the group (128), N a multiple of 8.
            names = [
                n
                for n in names
                if model.get_submodule(n).in_features % INT4_GROUP_SIZE == 0
                and model.get_submodule(n).out_features % 8 == 0
            ]
            if not names:
                raise InvalidArgumentError(
                    f"weight_only_int4 needs Linear layers with an input width divisible by {INT4_GROUP_SIZE}"
                )
        _torchao_quantize(model, method, set(names))
        backend = "torchao"
    else:
        device = device if device.startswith("cuda") else "cuda"
        model = _bnb_replace(model, method, names, device)
        backend = "bitsandbytes"
    candidates = torch_layer_names(handle.model, types, None, None)
    step["result"].update(backend=backend, layers=names, kept_float=[n for n in candidates if n not in names])
    return handle.with_step(model, step, device=device)


def _torch_ao_dynamic(model: Any, names: list[str]) -> Any:
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "onednn", "qnnpack"):
        if engine in engines:
            torch.backends.quantized.engine = engine
            break
    return quantize_dynamic(model, {name: default_dynamic_qconfig for name in names}, dtype=torch.qint8)


def _torchao_quantize(model: Any, method: str, names: set[str]) -> None:
    try:
        from torchao.quantization import (
            Int4WeightOnlyConfig,
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError as exc:  # pragma: no cover - torchao is a dependency
        raise DependencyMissingError(f"{method} needs torchao: {exc}") from exc
    if method == "weight_only_int8":
        config: Any = Int8WeightOnlyConfig(set_inductor_config=False)
    elif method == "dynamic_int8":
        config = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    else:
        # tile_packed_to_4d uses torch's own tinygemm kernel (aten._weight_int4pack_mm), no extra packages.
        from torchao.quantization.quant_api import Int4PackingFormat

        config = Int4WeightOnlyConfig(
            group_size=INT4_GROUP_SIZE,
            int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D,
            set_inductor_config=False,
        )
    quantize_(model, config, filter_fn=lambda _module, fqn: fqn in names)


def _bnb_replace(model: Any, method: str, names: list[str], device: str) -> Any:
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise DependencyMissingError(f"{method} needs bitsandbytes: {exc}") from exc
    import torch

    model = model.to(torch.bfloat16)
    for name in names:
        old = model.get_submodule(name)
        if method == "bnb_int8":
            new = bnb.nn.Linear8bitLt(
                old.in_features,
                old.out_features,
                bias=old.bias is not None,
                has_fp16_weights=False,
                threshold=6.0,
                device="meta",  # no throwaway random init: the real weights are assigned next
            )
            new.weight = bnb.nn.Int8Params(old.weight.data.to(torch.float16), requires_grad=False)
        else:
            new = bnb.nn.Linear4bit(
                old.in_features,
                old.out_features,
                bias=old.bias is not None,
                compute_dtype=torch.bfloat16,
                quant_type="nf4",
                device="meta",
            )
            new.weight = bnb.nn.Params4bit(old.weight.data, requires_grad=False, quant_type="nf4", module=new)
        if old.bias is not None:
            new.bias = torch.nn.Parameter(old.bias.data.to(torch.bfloat16), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    # Moving to CUDA is what quantizes bitsandbytes parameters.
    return model.to(device)


def _cast_whole(
    handle: ModelHandle,
    method: str,
    include: list[str] | None,
    exclude: list[str] | None,
    layer_types: list[str] | None,
    step: dict[str, Any],
) -> ModelHandle:
    """fp16/bf16: cast the selected layers; unselected ones stay fp32 with casts at their boundaries."""
    import torch

    dtype = torch.float16 if method == "fp16" else torch.bfloat16
    model = copy_model(handle.model).eval()
    partial = bool(include or exclude or layer_types) and _is_module_tree(model)
    if not partial:
        if isinstance(model, torch.jit.ScriptModule):
            # ScriptModule.to() can leave non-leaf weights that fail under inference_mode: cast in place.
            for t in [*model.parameters(), *model.buffers()]:
                if t.is_floating_point():
                    t.data = t.data.to(dtype)
        else:
            model = model.to(dtype)
        step["result"].update(backend="torch", layers="all", kept_float=[])
        return handle.with_step(model, step)
    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    chosen = {
        n
        for n, m in leaves
        if (not layer_types or type(m).__name__ in layer_types) and _selected([n], include, exclude)
    }
    if not chosen:
        _no_layers(method, layer_types or ["any"], include, exclude)
    for name, module in leaves:
        if name in chosen:
            module.to(dtype)
    # Every leaf casts its floating inputs to its own dtype, so fp32 and fp16 layers can follow each other.
    for _name, module in leaves:
        module.register_forward_pre_hook(_cast_inputs_hook)
    model.register_forward_hook(_cast_output_hook(dtype))
    kept = [n for n, m in leaves if n not in chosen and any(True for _ in m.parameters(recurse=False))]
    step["result"].update(backend="torch", layers=sorted(chosen), kept_float=kept)
    return handle.with_step(model, step)


def _module_dtype(module: Any) -> Any:
    for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        if t.is_floating_point():
            return t.dtype
    return None


def _cast_inputs_hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    import torch

    dtype = _module_dtype(module)
    if dtype is None:
        return None
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _cast_output_hook(dtype: Any) -> Any:
    def hook(_module: Any, _args: Any, output: Any) -> Any:
        import torch

        if isinstance(output, torch.Tensor) and output.is_floating_point():
            return output.to(dtype)
        return output

    return hook


# ---------------------------------------------------------------------------------------------
# ONNX


def _as_onnx_handle(handle: ModelHandle) -> ModelHandle:
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


def _quantize_onnx(
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
