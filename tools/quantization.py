"""`quantize`: lower-precision weights (and activations) for torch and ONNX models.

Which library does what, chosen by what really shrinks the file and runs on the device:

- dynamic_int8: torch on CPU: torch.ao `quantize_dynamic` (fbgemm/x86 kernels; torchao's int8
  dynamic path measured ~10x slower on CPU); torch on CUDA: torchao
  `Int8DynamicActivationInt8WeightConfig`; ONNX: ONNX Runtime `quantize_dynamic` (Gemm rewritten to
  MatMul + Add first).
- weight_only_int8 / weight_only_int4: torchao `Int8WeightOnlyConfig` / `Int4WeightOnlyConfig`
  (tinygemm packing, CUDA only; without CUDA, TorchScript and pt2 models get int4 from ONNX Runtime).
- TorchScript and torch.export (.pt2) models get the torch paths on their module tree
  (tools.graph_modules: each linear / conv call lifted into a real layer under its own name, TorchScript
  converted with torch's TS2EPConverter first), so the result stays in the model's format: weight-only
  and, for .pt2, dynamic int8 as portable int8 layers (torchao's int8 weights and scales in plain
  buffers: the file runs with torch alone), TorchScript's dynamic int8 as torch.ao's layers, fp16 /
  bf16 as a cast of the whole graph including the dtype constants it baked in.
- bnb_int8 / bnb_nf4: bitsandbytes `Linear8bitLt` / `Linear4bit` swapped in; CUDA only.
- fp8_weight_only / fp8_dynamic: torchao `Float8WeightOnlyConfig` /
  `Float8DynamicActivationFloat8WeightConfig` (per-row scales) on the bf16 model; CUDA with compute
  capability 8.9+ (Ada, Hopper), a typed UnsupportedDeviceError elsewhere. These and the int8 / int4
  weight-only formats are the weight formats of the decode runtime: quantize, then `compile_model`.
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

from collections.abc import Iterable
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
from tools.onnx_quantization import ONNX_METHODS, onnx_layer_names, onnx_module_path
from tools.onnx_quantization import as_onnx_handle as _as_onnx_handle
from tools.onnx_quantization import quantize_onnx as _quantize_onnx
from tools.selection import no_layers as _no_layers
from tools.selection import selected as _selected

METHODS: tuple[str, ...] = get_args(QuantMethod)
GPU_ONLY = ("weight_only_int4", "bnb_int8", "bnb_nf4", "fp8_weight_only", "fp8_dynamic")
FP8_METHODS = ("fp8_weight_only", "fp8_dynamic")
FP8_MIN_CAPABILITY = (8, 9)  # float8 matmuls: Ada (8.9) and Hopper (9.0) and later
BACKENDS = ("auto", "torch", "onnxruntime")
INT4_GROUP_SIZE = 128

__all__ = ["METHODS", "ONNX_METHODS", "onnx_layer_names", "onnx_module_path", "quantize", "torch_layer_names"]

# Default layer types per method (torch module class names).
_DEFAULT_TYPES: dict[str, tuple[str, ...]] = {
    "dynamic_int8": ("Linear",),
    "weight_only_int8": ("Linear",),
    "weight_only_int4": ("Linear",),
    "bnb_int8": ("Linear",),
    "bnb_nf4": ("Linear",),
    "fp8_weight_only": ("Linear",),
    "fp8_dynamic": ("Linear",),
    "static_int8": ("Linear", "Conv1d", "Conv2d"),
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
    block_size: int | None = None,
    accuracy_target: float | None = None,
    size_target: float | None = None,
    recovery: str = "none",
    recovery_steps: int = 300,
    recovery_time_s: float | None = 30.0,
    recovery_learning_rate: float = 1e-4,
    teacher: ModelHandle | None = None,
) -> ModelHandle:
    """A new handle with `method` applied to the selected layers; `handle` is left untouched.

    The recipe step holds the arguments (replayable as `quantize(h, **step minus tool/result)`) and a
    `result` dict: the library used, the layers quantized, whether the model went through ONNX.
    `backend`: "auto" keeps the model's runtime (torch.ao / torchao / bitsandbytes for torch modules,
    ONNX Runtime for ONNX graphs); "onnxruntime" exports a torch model to ONNX first and quantizes it
    with ONNX Runtime (dynamic_int8, static_int8, fp16). On the 2-core CPU of the test machine ONNX
    Runtime's dynamic int8 ran the 0.3 M-parameter MLP ~7x faster than torch eager fp32 at batch 1,
    where torch.ao's int8 was slower than fp32; "torch" insists on a torch module.
    `block_size` (weight_only_int4) and `accuracy_target` (mixed precision by measured sensitivity) apply
    on the ONNX Runtime path; see `tools.onnx_quantization`.
    `size_target` (a fraction of the current size on disk, e.g. 0.25) chooses each layer's precision
    (float, 8-bit, 4-bit where the method and runtime offer them) by measured sensitivity, at the least
    measured cost that fits (tools.sensitivity.choose_for_size); with `accuracy_target`, mixed precision
    applies on torch models too (tools.mixed_precision). Both together (weight_only_int4 on ONNX
    Runtime): the mix of whole layers when it fits and retains `accuracy_target`, else the least-error mix
    with layers split between 4-bit and int8 channels (a few microseconds slower per split layer).
    `recovery="qat"`: quantization-aware training first (tools.qat): the selected Linear layers are
    fake-quantized as the chosen kernel will quantize them, distilled from `teacher` (default: the float
    model itself) for at most `recovery_steps` steps and `recovery_time_s` seconds, then quantized by the
    same post-training path; the step's `result["recovery"]` says what it cost and gained.
    """
    if recovery not in ("none", "qat"):
        raise InvalidArgumentError(f"unknown recovery '{recovery}'; choose 'none' or 'qat'")
    if recovery == "qat":
        if accuracy_target is not None or size_target is not None:
            raise InvalidArgumentError(
                "recovery='qat' trains every selected layer at one precision: omit accuracy_target and "
                "size_target"
            )
        from tools.qat import quantize_aware

        return quantize_aware(
            handle,
            method,
            teacher=teacher,
            include=include,
            exclude=exclude,
            layer_types=layer_types,
            seed=seed,
            backend=backend,
            block_size=block_size,
            steps=recovery_steps,
            time_budget_s=recovery_time_s,
            learning_rate=recovery_learning_rate,
        )
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
    graph = handle.runtime == "torch" and _is_graph(handle.model)
    # TorchScript and torch.export models get the torch paths through a module tree (tools.graph_modules);
    # ONNX Runtime only for what torch has no path for here: static int8, and int4 without CUDA.
    onnx_path = (
        handle.runtime == "onnx"
        or backend == "onnxruntime"
        or (graph and backend == "auto" and _needs_onnx(method))
    )
    if block_size is not None:
        step["block_size"] = block_size
    if accuracy_target is not None:
        step["accuracy_target"] = accuracy_target
    if size_target is not None:
        step["size_target"] = size_target
    if (
        accuracy_target is not None
        and size_target is not None
        and not (onnx_path and method == "weight_only_int4")
    ):
        raise InvalidArgumentError(
            "give accuracy_target or size_target, not both (both together: weight_only_int4 on ONNX "
            "Runtime, where accuracy_target says when a mix of whole layers is good enough)"
        )
    if size_target is not None and not 0.0 < size_target < 1.0:
        raise InvalidArgumentError(
            f"size_target is a fraction of the current size in (0, 1), got {size_target}"
        )
    if block_size is not None and not onnx_path:
        raise InvalidArgumentError(
            "block_size applies on ONNX Runtime (an ONNX model or backend='onnxruntime')"
        )
    if method in GPU_ONLY and not (onnx_path and method in ONNX_METHODS):
        _require_cuda(method)
    if method in FP8_METHODS:
        _require_fp8(method)
    step["result"] = {}
    options = {"block_size": block_size, "accuracy_target": accuracy_target, "size_target": size_target}
    targets = accuracy_target is not None or size_target is not None
    if targets and not onnx_path and method != "static_int8":  # static int8 runs in ONNX Runtime
        from tools.mixed_precision import quantize_mixed

        return quantize_mixed(
            handle,
            method,
            include=include,
            exclude=exclude,
            layer_types=layer_types,
            seed=seed,
            backend=backend,
            accuracy_target=accuracy_target,
            size_target=size_target,
            step=step,
        )

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
        handle, options = _exported(handle, step, options)
    if handle.runtime == "onnx":
        return _quantize_onnx(
            handle, method, include, exclude, layer_types, calibration_samples, seed, step, **options
        )
    if graph and onnx_path:
        onnx_handle, options = _exported(handle, step, options)
        step["result"]["conversion"] = (
            f"{method} has no torch path on this machine; the {handle.format} model was exported to ONNX "
            "and quantized with ONNX Runtime"
        )
        return _quantize_onnx(
            onnx_handle, method, include, exclude, layer_types, calibration_samples, seed, step, **options
        )
    if graph:
        return _quantize_graph(handle, method, include, exclude, layer_types, calibration_samples, seed, step)
    return _quantize_torch(
        handle, method, include, exclude, layer_types, calibration_samples, seed, step, options
    )


# ---------------------------------------------------------------------------------------------
# selection


def _require_cuda(method: str) -> None:
    import torch

    if not torch.cuda.is_available():
        alternatives = "dynamic_int8, weight_only_int8, fp16, bf16 or static_int8"
        raise UnsupportedDeviceError(
            f"{method} needs a CUDA GPU and this machine has none; on CPU use {alternatives}",
        )


def _require_fp8(method: str) -> None:
    import torch

    capability = torch.cuda.get_device_capability()
    if capability < FP8_MIN_CAPABILITY:
        raise UnsupportedDeviceError(
            f"{method} needs float8 matmul kernels (compute capability 8.9+: Ada, Hopper); "
            f"{torch.cuda.get_device_name()} has {capability[0]}.{capability[1]}: "
            "use weight_only_int8 or bf16",
        )


def _is_graph(model: Any) -> bool:
    """A TorchScript module or a torch.export graph module (the formats a user exports a model in)."""
    import torch

    return isinstance(model, (torch.jit.ScriptModule, torch.fx.GraphModule))


def _needs_onnx(method: str) -> bool:
    """Methods a graph model only gets through ONNX Runtime on this machine."""
    import torch

    return method == "static_int8" or (method == "weight_only_int4" and not torch.cuda.is_available())


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


# ---------------------------------------------------------------------------------------------
# torch


def _exported(
    handle: ModelHandle, step: dict[str, Any], options: dict[str, Any]
) -> tuple[ModelHandle, dict[str, Any]]:
    """The torch model exported to ONNX, and the options for it: a size target stays a fraction of the
    torch model's own size, not of the export's (vla-mini's ONNX export is 1% larger than its state dict,
    so 0.25 of the export came out 74.8% smaller than the model, short of a 75% target)."""
    from tools.exporting import serialized_size

    onnx_handle = _as_onnx_handle(handle)
    step["result"]["exported_to_onnx"] = True
    target = options.get("size_target")
    if target is None:
        return onnx_handle, options
    own, exported = serialized_size(handle), max(int(onnx_handle.model.ByteSize()), 1)
    scaled = round(float(target) * own / exported, 6)
    step["result"]["size_target_of_export"] = scaled
    return onnx_handle, {**options, "size_target": scaled}


def _quantize_torch(
    handle: ModelHandle,
    method: str,
    include: list[str] | None,
    exclude: list[str] | None,
    layer_types: list[str] | None,
    calibration_samples: int,
    seed: int,
    step: dict[str, Any],
    options: dict[str, Any] | None = None,
) -> ModelHandle:
    import torch

    if method == "static_int8":
        onnx_handle, options = _exported(handle, step, options or {})
        return _quantize_onnx(
            onnx_handle,
            method,
            include,
            exclude,
            layer_types,
            calibration_samples,
            seed,
            step,
            **options,
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
    elif method in ("dynamic_int8", "weight_only_int8", "weight_only_int4", *FP8_METHODS):
        if method in FP8_METHODS:
            # torchao's float8 kernels compute in bf16 on CUDA.
            device = device if device.startswith("cuda") else "cuda"
            model = model.to(device=device, dtype=torch.bfloat16)
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


def _quantize_graph(
    handle: ModelHandle,
    method: str,
    include: list[str] | None,
    exclude: list[str] | None,
    layer_types: list[str] | None,
    calibration_samples: int,
    seed: int,
    step: dict[str, Any],
) -> ModelHandle:
    """TorchScript and torch.export models: the torch paths on their module tree (tools.graph_modules).

    The layers stay where the graph calls them, so the result is exported in the model's own format:
    weight-only and (for .pt2) dynamic int8 as portable int8 layers (torchao computes the int8 weights
    and scales; the layers hold them as plain buffers, so the file loads with torch alone); dynamic
    int8 of a TorchScript model as torch.ao's dynamic layers (TorchScript holds them natively); fp16 /
    bf16 as a cast of the whole graph, dtype constants included (or of the selected layers, behind casts).
    """
    import torch

    from tools.graph_modules import module_tree

    if method in ("fp16", "bf16") and isinstance(handle.model, torch.jit.ScriptModule):
        try:
            tree, how = module_tree(handle)
        except UnsupportedFormatError as exc:
            # The converter refused: cast the TorchScript module's weights in place, as before.
            step["result"]["module_tree"] = {"converted": None, "reason": exc.message}
            return _cast_whole(handle, method, include, exclude, layer_types, step)
    else:
        tree, how = module_tree(handle)
    if how:
        step["result"]["module_tree"] = how
    tree_handle = handle.clone(model=tree)
    if method in ("fp16", "bf16"):
        return _cast_graph(tree_handle, method, include, exclude, layer_types, step)
    on_cuda = handle.device.startswith("cuda")
    if method not in ("weight_only_int8", "dynamic_int8") or on_cuda:
        return _quantize_torch(
            tree_handle, method, include, exclude, layer_types, calibration_samples, seed, step
        )
    types = tuple(layer_types) if layer_types else _DEFAULT_TYPES[method]
    if set(types) - {"Linear"}:
        raise InvalidArgumentError(
            f"{method} quantizes Linear layers only; {sorted(set(types) - {'Linear'})} are not supported "
            "(use static_int8 for convolutions)",
        )
    names = torch_layer_names(tree, types, include, exclude)
    if not names:
        _no_layers(method, types, include, exclude)
    model = copy_model(tree)
    if method == "dynamic_int8" and handle.format == "torchscript":
        model = _torch_ao_dynamic(model, names)
        step["result"].update(backend="torch.ao", layer="torch.ao DynamicQuantizedLinear")
    else:
        from tools.graph_modules import portable_int8

        _torchao_quantize(model, "weight_only_int8", set(names))
        portable_int8(model, names, dynamic=method == "dynamic_int8")
        layer = "Int8DynamicLinear (int8 x int8 _int_mm)" if method == "dynamic_int8" else "Int8WeightLinear"
        step["result"].update(backend="torch", weights="torchao Int8WeightOnlyConfig", layer=layer)
    candidates = torch_layer_names(tree, types, None, None)
    step["result"].update(layers=names, kept_float=[n for n in candidates if n not in names])
    return handle.with_step(model, step)


def _cast_graph(
    handle: ModelHandle,
    method: str,
    include: list[str] | None,
    exclude: list[str] | None,
    layer_types: list[str] | None,
    step: dict[str, Any],
) -> ModelHandle:
    """fp16/bf16 of a graph module: the whole graph (weights and the dtype constants it baked in), or
    the selected lifted layers, each casting its input in and its output back to the graph's dtype."""
    import torch

    from tools.graph_modules import LIFTED_TYPES, cast_graph
    from tools.runtime import model_dtype

    dtype = torch.float16 if method == "fp16" else torch.bfloat16
    source = model_dtype(handle)
    model = copy_model(handle.model).eval()
    if not (include or exclude or layer_types):
        changed = cast_graph(model, dtype, source)
        _check_runs(handle, model, method)
        step["result"].update(
            backend="torch",
            layers="all",
            kept_float=[],
            io_dtype=_dtype_name(source),
            graph_constants=changed,
        )
        return handle.with_step(model, step)
    layers = [(n, m) for n, m in model.named_modules() if n and isinstance(m, LIFTED_TYPES)]
    chosen = {
        n
        for n, m in layers
        if (not layer_types or type(m).__name__ in layer_types) and _selected([n], include, exclude)
    }
    if not chosen:
        _no_layers(method, layer_types or ["any"], include, exclude)
    for name, module in layers:
        if name in chosen:
            module.to(dtype)
            module.register_forward_pre_hook(_cast_inputs_hook)
            module.register_forward_hook(_cast_output_hook(source))
    _check_runs(handle, model, method)
    step["result"].update(
        backend="torch",
        layers=sorted(chosen),
        kept_float=[n for n, _ in layers if n not in chosen],
        io_dtype=_dtype_name(source),
    )
    return handle.with_step(model, step)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _check_runs(handle: ModelHandle, model: Any, method: str) -> None:
    """The cast graph must still run on the signature's inputs (a dtype the graph fixed would fail here)."""
    import torch

    from tools.exporting import example_inputs
    from tools.runtime import to_tensors

    try:
        with torch.no_grad():
            model(*to_tensors(handle.clone(model=model), example_inputs(handle)))
    except Exception as exc:  # noqa: BLE001 - any failure means the cast graph is unusable
        raise UnsupportedFormatError(
            f"the {method} graph does not run: {str(exc).splitlines()[0][:300]}; keep the model in float32 "
            "or cast only some layers (include / exclude)",
        ) from exc


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
    config = torchao_config(method)  # DependencyMissingError without torchao
    from torchao.quantization import quantize_

    quantize_(model, config, filter_fn=lambda _module, fqn: fqn in names)


def torchao_config(method: str) -> Any:
    """The torchao config `quantize` applies for `method` (also what a saved model's
    `TorchAoConfig` names, so transformers loads the same weights back)."""
    if method in FP8_METHODS:
        try:
            from torchao.quantization import (
                Float8DynamicActivationFloat8WeightConfig,
                Float8WeightOnlyConfig,
                PerRow,
            )
        except ImportError as exc:  # pragma: no cover - torchao is a dependency
            raise DependencyMissingError(f"{method} needs torchao's float8 configs: {exc}") from exc
        if method == "fp8_weight_only":
            return Float8WeightOnlyConfig(set_inductor_config=False)
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    try:
        from torchao.quantization import (
            Int4WeightOnlyConfig,
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
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
    return config


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

    from tools.runtime import model_dtype

    dtype = torch.float16 if method == "fp16" else torch.bfloat16
    step["result"]["io_dtype"] = _dtype_name(model_dtype(handle))
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
