"""`export`: write a handle as ONNX, TorchScript, torch.export (.pt2) or safetensors; and its size.
`export_hf_directory`: a transformers model as the directory `from_pretrained` loads.

Every exported file loads back with `tools.loading.load_model` (safetensors with the handle's
architecture) and gives the same outputs up to the format's precision. `serialized_size` is the
"size on disk" every tool reports: the bytes of the handle in its natural format.

An exported model keeps the original's contract: the same input names, and the dtypes it took and
returned. A model cast to fp16 / bf16 (the recipe's cast step records the dtype it had, `io_dtype`)
is written with its floating inputs cast in and its floating outputs cast back to that dtype, so the
file runs on the original's float32 inputs with the plain runtime (`torch.jit.load(p)(*inputs)`,
`torch.export.load(p).module()(*inputs)`, ONNX Runtime) and returns what the original returned.
"""

from __future__ import annotations

import contextlib
import io
import json
import keyword
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tools.arguments import check_arguments
from tools.errors import UnsupportedFormatError
from tools.handle import ModelHandle
from tools.runtime import check_inputs, synthesize_inputs, to_tensors

ExportFormat = Literal["onnx", "torchscript", "pt2", "safetensors"]
EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript", "pt2", "safetensors")
ONNX_OPSET = 17
# A single-file ONNX model is one protobuf message, which protobuf caps at 2 GiB: above it the weights
# go to one external data file beside the graph (`<name>.data`).
_PROTOBUF_LIMIT = 2**31 - 1
ONNX_SINGLE_FILE_LIMIT = _PROTOBUF_LIMIT


def export(handle: ModelHandle, fmt: str, path: Path | str) -> Path:
    """Write `handle` to `path` in `fmt`; returns the path. The handle is not modified."""
    path = Path(path)
    if fmt not in EXPORT_FORMATS:
        # A format the tool cannot write, like a model format load_model cannot read: unsupported_format
        # (the API answers both with 422 and the error's code).
        raise UnsupportedFormatError(
            f"unknown export format '{fmt}'; choose one of {', '.join(EXPORT_FORMATS)}"
        )
    check_arguments("export", fmt=fmt, path=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        import onnx

        from tools.loading import TORCHSCRIPT_META

        model = to_onnx_model(handle)
        # The signature (with integer ranges ONNX cannot state) travels in the model's metadata.
        for prop in list(model.metadata_props):
            if prop.key == TORCHSCRIPT_META:
                model.metadata_props.remove(prop)
        model.metadata_props.add(key=TORCHSCRIPT_META, value=_meta_json(handle))
        onnx_data_file(path).unlink(missing_ok=True)
        if model.ByteSize() > ONNX_SINGLE_FILE_LIMIT:
            onnx.save_model(
                model,
                str(path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=onnx_data_file(path).name,
                size_threshold=1024,
            )
        else:
            onnx.save_model(model, str(path))
    elif fmt == "torchscript":
        _export_torchscript(handle, path)
    elif fmt == "pt2":
        _export_pt2(handle, path)
    else:
        _export_safetensors(handle, path)
    return path


def onnx_data_file(path: Path) -> Path:
    """Where `export(..., "onnx", path)` puts the weights of a model over 2 GiB (external data)."""
    return path.with_name(path.name + ".data")


def serialized_size(handle: ModelHandle) -> int:
    """Bytes of the model in its natural format: ONNX protobuf, or torch.save of the state dict."""
    if handle.runtime == "onnx":
        return int(handle.model.ByteSize())
    import torch

    if isinstance(handle.model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(handle.model, buffer)
        return buffer.tell()
    # Counted, not kept: a buffer would hold a second copy of a multi-gigabyte checkpoint's weights.
    sink = _ByteCounter()
    torch.save(handle.model.state_dict(), sink)
    return sink.count


class _ByteCounter(io.RawIOBase):
    """A write-only stream that only counts what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        n = len(memoryview(data).cast("B"))
        self.count += n
        return n


def example_inputs(handle: ModelHandle, batch_size: int = 2) -> dict[str, np.ndarray]:
    """Inputs to trace or export with: the evaluation data's first samples, else synthesized ones."""
    from tools.loading import require_inputs

    specs = require_inputs(handle)
    data = handle.eval_data
    if data is not None and data.num_samples >= 1 and set(data.inputs) == {s.name for s in specs}:
        check_inputs(specs, data.inputs)
        n = min(batch_size, data.num_samples)
        return {k: np.ascontiguousarray(v[:n]) for k, v in data.inputs.items()}
    return synthesize_inputs(specs, batch_size=batch_size, seed=0)


def to_onnx_model(handle: ModelHandle) -> Any:
    """The handle as an `onnx.ModelProto` (a copy for ONNX handles; an export for torch ones)."""
    import onnx

    if handle.runtime == "onnx":
        copy = onnx.ModelProto()
        copy.CopyFrom(handle.model)
        return copy
    _refuse_quantized(handle, "ONNX")
    _refuse_bfloat16(handle)
    import torch

    names = [s.name for s in handle.inputs]
    dynamic_axes: dict[str, dict[int, str]] = {
        s.name: {i: ("batch" if i == 0 else f"{s.name}_dim{i}") for i, d in enumerate(s.shape) if d is None}
        for s in handle.inputs
    }
    dynamic_axes = {k: v for k, v in dynamic_axes.items() if v}
    batch_dynamic = any(s.shape and s.shape[0] is None for s in handle.inputs)
    if batch_dynamic:
        dynamic_axes["output"] = {0: "batch"}
    # Export in eval mode (dropout off) and give the caller's modules back each in the mode it was in
    # (a wrapper may be in training mode around a model in eval mode: `.train()` would wake its dropout).
    # Exported programs' graph modules keep the mode they were exported in, but their modes are restored
    # too: torch's TorchScript-based exporter sets the whole tree back to `training` afterwards, which
    # woke the batch norms of a .pt2 ResNet (a batch of 1 then failed) in the handle it was given.
    is_module = isinstance(handle.model, torch.nn.Module)
    modes = {m: m.training for m in handle.model.modules()} if is_module else {}
    if any(modes.values()) and not isinstance(handle.model, torch.fx.GraphModule):
        handle.model.eval()
    try:
        with exportable(handle) as (model, args):
            return _export_onnx(model, args, names, dynamic_axes, handle)
    finally:
        for module, training in modes.items():
            module.training = training


def io_dtypes(handle: ModelHandle) -> tuple[Any, Any] | None:
    """(compute dtype, contract dtype) of a model cast to fp16 / bf16, None for any other model.

    The contract dtype is what the model took and returned before its first cast (the cast step's
    `io_dtype`); the compute dtype is what robopt feeds it (`tools.runtime.model_dtype`).
    """
    import torch

    from tools.runtime import model_dtype

    if handle.runtime != "torch":
        return None
    for step in handle.recipe:
        if step.get("tool") == "quantize" and step.get("method") in ("fp16", "bf16"):
            name = (step.get("result") or {}).get("io_dtype")
            dtype = getattr(torch, str(name), None) if name else None
            if isinstance(dtype, torch.dtype):
                return model_dtype(handle), dtype
            return None
    return None


@contextlib.contextmanager
def exportable(handle: ModelHandle) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """The module to trace or export and its example arguments.

    A half-precision model (see `io_dtypes`) is given, for the duration, a forward pre-hook casting its
    floating inputs to its compute dtype and a hook casting its floating outputs back to the contract
    dtype, and example inputs in the contract dtype: the exported graph holds both casts, and the
    parameter names and argument names stay the model's. A TorchScript module cannot take hooks: it
    is wrapped in a module whose forward has the signature's argument names.
    """
    import torch

    dtypes = io_dtypes(handle)
    if dtypes is None:
        yield handle.model, tuple(to_tensors(handle, example_inputs(handle)))
        return
    compute, contract = dtypes
    data = example_inputs(handle)
    args = tuple(
        torch.from_numpy(np.ascontiguousarray(data[s.name])).to(handle.device) for s in handle.inputs
    )
    model = handle.model
    if isinstance(model, torch.jit.ScriptModule):
        yield _cast_wrapper([s.name for s in handle.inputs], model, compute, contract), args
        return
    if isinstance(model, torch.fx.GraphModule):
        from tools.graph_modules import with_io_casts

        # torch.export runs a graph module's graph, not its hooks: the casts go into a copy of the graph.
        yield with_io_casts(model, [a.is_floating_point() for a in args], compute, contract), args
        return
    hooks = [
        model.register_forward_pre_hook(lambda _m, a: _cast_floats(a, compute)),
        model.register_forward_hook(lambda _m, _a, out: _cast_floats(out, contract)),
    ]
    try:
        yield model, args
    finally:
        for hook in hooks:
            hook.remove()


def _cast_floats(value: Any, dtype: Any) -> Any:
    import torch

    return torch.utils._pytree.tree_map(
        lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t, value
    )


def _cast_wrapper(names: list[str], inner: Any, compute: Any, contract: Any) -> Any:
    """A module whose forward(<names>) casts floating inputs to `compute`, calls `inner`, and casts
    floating outputs to `contract`."""
    import torch

    if len(set(names)) != len(names) or not all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        names = [f"input_{i}" for i in range(len(names))]
    joined = ", ".join(names)
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {joined}):\n    return self.run({joined})\n", namespace)  # noqa: S102

    class CastIO(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def run(self, *args: Any) -> Any:
            return _cast_floats(self.inner(*_cast_floats(args, compute)), contract)

    CastIO.forward = namespace["forward"]  # type: ignore[method-assign]
    return CastIO()


def _export_onnx(
    model: Any, args: tuple[Any, ...], names: list[str], dynamic_axes: dict[str, Any], handle: ModelHandle
) -> Any:
    import onnx
    import torch

    errors = []
    fixed: list[str] = []
    checks = _size_checks(handle, model, args)
    # The TorchScript-based exporter first: it handles dynamic batch axes of plain modules robustly. A
    # graph that holds a dynamic size fixed goes to the dynamo exporter (torch.export keeps sizes symbolic).
    try:
        buffer = io.BytesIO()
        torch.onnx.export(
            model,
            args,
            buffer,
            input_names=names,
            output_names=["output"],
            dynamic_axes=dynamic_axes or None,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        proto = onnx.load_from_string(buffer.getvalue())
        what = _onnx_fixed_size(proto, names, checks)
        if what is None:
            return proto
        fixed.append(what)
        errors.append(f"torchscript exporter: the graph is fixed to the exported {what}")
    except Exception as exc:  # noqa: BLE001 - fall back to the dynamo exporter below
        errors.append(f"torchscript exporter: {exc}")
    try:
        dynamic_shapes = tuple(
            {i: torch.export.Dim.AUTO for i, d in enumerate(s.shape) if d is None} or None
            for s in handle.inputs
        )
        program = torch.onnx.export(
            model,
            args,
            input_names=names,
            output_names=["output"],
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            verbose=False,
        )
        proto = program.model_proto
        what = _onnx_fixed_size(proto, names, checks)
        if what is None:
            return proto
        fixed.append(what)
        errors.append(f"dynamo exporter: the graph is fixed to the exported {what}")
    except Exception as exc:  # noqa: BLE001
        errors.append(f"dynamo exporter: {exc}")
    details = " | ".join(e[:500] for e in errors)
    if fixed:
        raise FrozenTraceError(
            f"the ONNX export of this model is fixed to the exported {fixed[0]}, where the model takes any; "
            "use a torch backend for it (quantize with backend='torch'), or upload an ONNX file exported "
            "with dynamic axes",
            details=details,
        )
    raise UnsupportedFormatError("the model could not be exported to ONNX", details=details)


def _quantization_backend(handle: ModelHandle) -> str | None:
    """The library that quantized this torch model, if its weights are no longer plain float tensors."""
    import torch

    for step in handle.recipe:
        used = (step.get("result") or {}).get("backend")
        if step.get("tool") == "quantize" and used in ("torch.ao", "torchao", "bitsandbytes"):
            return str(used)
    if isinstance(handle.model, torch.nn.Module):
        for module in handle.model.modules():
            if type(module).__module__.startswith(("torch.ao.nn.quantized", "bitsandbytes")):
                return type(module).__module__.split(".")[0]
        if any(type(p.data) is not torch.Tensor for p in handle.model.parameters()):
            return "torchao"  # tensor subclasses (Int8Tensor, Int4TilePackedTo4dTensor, ...)
    return None


def _refuse_quantized(handle: ModelHandle, target: str) -> None:
    backend = _quantization_backend(handle)
    if backend is not None:
        raise UnsupportedFormatError(
            f"a model quantized with {backend} cannot be exported to {target}; export the float model to "
            "ONNX and quantize the ONNX model (dynamic_int8 or static_int8) instead",
        )


def _refuse_bfloat16(handle: ModelHandle) -> None:
    """A bf16 graph exports, but ONNX Runtime has no bfloat16 Gemm/MatMul/Conv kernels: it would not run."""
    import torch

    model = handle.model
    tensors = [*model.parameters(), *model.buffers()] if isinstance(model, torch.nn.Module) else []
    if any(t.dtype == torch.bfloat16 for t in tensors):
        raise UnsupportedFormatError(
            "a bf16 model cannot be exported to ONNX: ONNX Runtime has no bfloat16 kernels for its layers, "
            "so the file would not run; quantize the float model with fp16 for ONNX, or keep the bf16 model "
            "in a torch format (torchscript, pt2 or safetensors)",
        )


def _meta_json(handle: ModelHandle) -> str:
    return json.dumps(
        {
            "inputs": [s.model_dump() for s in handle.inputs],
            "architecture": handle.architecture.model_dump() if handle.architecture else None,
            "recipe": handle.recipe,
        },
        default=str,
    )


def _require_torch(handle: ModelHandle, fmt: str) -> None:
    if handle.runtime != "torch":
        raise UnsupportedFormatError(
            f"an ONNX model cannot be exported to {fmt}; it can only be exported as onnx",
        )


def _export_torchscript(handle: ModelHandle, path: Path) -> None:
    import torch

    from tools.loading import TORCHSCRIPT_META

    _require_torch(handle, "torchscript")
    extra = {TORCHSCRIPT_META: _meta_json(handle)}
    if isinstance(handle.model, torch.jit.ScriptModule) and io_dtypes(handle) is None:
        torch.jit.save(handle.model, str(path), _extra_files=extra)
        return
    if _quantization_backend(handle) in ("torchao", "bitsandbytes"):
        _refuse_quantized(handle, "TorchScript")
    try:
        with exportable(handle) as (model, args), torch.no_grad():
            if isinstance(model, torch.fx.GraphModule):
                from tools.graph_modules import for_tracing

                model = for_tracing(model)
            # strict=False: a transformers model's outputs are a dict, whose keys never change per input.
            traced = torch.jit.trace(model, args, check_trace=False, strict=False)
            _check_trace_is_dynamic(handle, model, traced, args)
    except UnsupportedFormatError:
        raise
    except Exception as exc:
        raise UnsupportedFormatError(
            "the model could not be traced to TorchScript", details=str(exc)
        ) from exc
    torch.jit.save(traced, str(path), _extra_files=extra)


class FrozenTraceError(UnsupportedFormatError):
    """A TorchScript trace or an ONNX export that holds a dynamic input size as a constant: it would fail,
    or be wrong, on inputs the original takes."""


def _size_variants(handle: ModelHandle, args: tuple[Any, ...]) -> list[tuple[str, tuple[Any, ...]]]:
    """Example arguments at another size, one per dynamic axis worth checking: one more sample when the
    batch axis is dynamic, one token fewer when token ids (2-D integer inputs) have a dynamic sequence."""
    import torch

    variants: list[tuple[str, tuple[Any, ...]]] = []
    if any(s.shape and s.shape[0] is None for s in handle.inputs):
        batch = tuple(
            torch.cat([a, a[:1]])
            if isinstance(a, torch.Tensor) and a.ndim and s.shape and s.shape[0] is None
            else a
            for a, s in zip(args, handle.inputs, strict=True)
        )
        variants.append(("batch size", batch))

    def tokens(a: Any, s: Any) -> bool:
        return (
            isinstance(a, torch.Tensor)
            and not a.is_floating_point()
            and a.ndim == 2
            and a.shape[1] > 2
            and len(s.shape or []) == 2
            and s.shape[1] is None
        )

    if any(tokens(a, s) for a, s in zip(args, handle.inputs, strict=True)):
        shorter = tuple(a[:, :-1] if tokens(a, s) else a for a, s in zip(args, handle.inputs, strict=True))
        variants.append(("sequence length", shorter))
    return variants


def _check_trace_is_dynamic(handle: ModelHandle, model: Any, traced: Any, args: tuple[Any, ...]) -> None:
    """A trace can freeze a size the model computes from its input (a reshape to the traced batch, a
    position table sliced to the traced sequence): with a dynamic batch axis the trace must give the
    model's outputs at another batch size too, and with a dynamic sequence axis of token ids (integer
    inputs) at a sequence one shorter. A candidate converted through torch.export on one example
    (TS2EPConverter) can hold the sequence length itself; it then fails here as well."""
    import torch
    from torch.utils._pytree import tree_leaves

    for what, other in _size_variants(handle, args):
        try:
            want = [t for t in tree_leaves(model(*other)) if isinstance(t, torch.Tensor)]
            got = [t for t in tree_leaves(traced(*other)) if isinstance(t, torch.Tensor)]
            same = len(want) == len(got) and all(
                w.shape == g.shape and torch.allclose(w.float(), g.float(), rtol=1e-3, atol=1e-4)
                for w, g in zip(want, got, strict=True)
            )
            error: Exception | None = None
        except Exception as exc:  # noqa: BLE001 - a trace that cannot run at another size is frozen
            same, error = False, exc
        if not same:
            raise FrozenTraceError(
                f"the TorchScript trace of this model is fixed to the traced {what} (it computes shapes "
                "from its input that tracing records as constants), where the original takes any",
                details=str(error)[:300] if error is not None else None,
            )


def _size_checks(
    handle: ModelHandle, model: Any, args: tuple[Any, ...]
) -> list[tuple[str, tuple[Any, ...], np.ndarray]]:
    """(what, arguments at another size, the model's first output there) for `_onnx_fixed_size`. Computed
    before exporting: torch's TorchScript-based exporter leaves modules in training mode."""
    import torch
    from torch.utils._pytree import tree_leaves

    out = []
    for what, other in _size_variants(handle, args):
        try:
            with torch.no_grad():
                want = next(t for t in tree_leaves(model(*other)) if isinstance(t, torch.Tensor))
        except Exception:  # noqa: BLE001 - the model itself does not take that size: nothing to check
            continue
        out.append((what, other, want.detach().float().cpu().numpy()))
    return out


def _onnx_fixed_size(
    proto: Any, names: list[str], checks: list[tuple[str, tuple[Any, ...], np.ndarray]]
) -> str | None:
    """The size an exported graph holds fixed where the model takes any (None: it gives the model's output
    at another batch size and sequence length). The TorchScript-based exporter traces a `.pt2` program's
    graph module, whose shape computations it records as constants: a BERT exported so took only the
    exported batch, and ONNX Runtime failed on the first evaluation batch ("2 by 64")."""
    if not checks or proto.ByteSize() > ONNX_SINGLE_FILE_LIMIT:
        return None
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - a graph ONNX Runtime cannot load is reported where it is run
        return None
    wanted = {i.name for i in session.get_inputs()}
    for what, other, want in checks:
        feed = {n: a.detach().cpu().numpy() for n, a in zip(names, other, strict=True) if n in wanted}
        try:
            got = session.run(None, feed)[0]
        except Exception:  # noqa: BLE001 - the graph cannot run at the other size: fixed
            return what
        if got.shape != want.shape:
            return what
        scale = max(float(np.abs(want).max()), 1e-6)
        if float(np.abs(got.astype(np.float32) - want).max()) / scale > 1e-2:
            return what
    return None


def _export_pt2(handle: ModelHandle, path: Path) -> None:
    import torch

    from tools.loading import TORCHSCRIPT_META

    _require_torch(handle, "pt2")
    if isinstance(handle.model, torch.jit.ScriptModule):
        from tools.graph_modules import module_tree

        # torch.export takes Python modules: the TorchScript graph converted (TS2EPConverter) first.
        handle = handle.clone(model=module_tree(handle)[0])
    if _quantization_backend(handle) == "bitsandbytes":
        _refuse_quantized(handle, "pt2")
    dynamic_shapes = tuple(
        {i: torch.export.Dim.AUTO for i, d in enumerate(s.shape) if d is None} or None for s in handle.inputs
    )
    try:
        with exportable(handle) as (model, args):
            program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
        _drop_stack_traces(program)
        if io_dtypes(handle) is not None:
            _accept_either_input_dtype(program)
        torch.export.save(program, str(path), extra_files={TORCHSCRIPT_META: _meta_json(handle)})
    except Exception as exc:
        raise UnsupportedFormatError(
            "the model could not be exported with torch.export", details=str(exc)
        ) from exc


def _accept_either_input_dtype(program: Any) -> None:
    """A half-precision program casts its inputs first: drop torch.export's dtype asserts on the inputs,
    so it takes the contract's float32 (the plain runtime) and its compute dtype (robopt's own runs,
    which feed a model its weights' dtype) alike."""
    import torch

    graph = program.graph_module.graph
    inputs = set(program.graph_signature.user_inputs)
    for node in list(graph.nodes):
        if (
            node.op == "call_function"
            and node.target is torch.ops.aten._assert_tensor_metadata.default
            and isinstance(node.args[0], torch.fx.Node)
            and node.args[0].op == "placeholder"
            and node.args[0].name in inputs
            and not node.users
        ):
            graph.erase_node(node)
    program.graph_module.recompile()


def _drop_stack_traces(program: Any) -> None:
    """Drop the Python stack trace torch.export stores on every node: only a debugging aid, it holds the
    exporting machine's file paths and, for a torchao int8 model whose dequantization is traced into
    the graph, was ~40% of the graph's JSON (about 4% of the 0.3 M-parameter MLP's int8 file)."""
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in getattr(graph, "nodes", ()):
            node.meta.pop("stack_trace", None)
            node.meta.pop("from_node", None)  # provenance of graph passes, another debugging aid


def _export_safetensors(handle: ModelHandle, path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    _require_torch(handle, "safetensors")
    if isinstance(handle.model, torch.jit.ScriptModule):
        state = handle.model.state_dict()
    else:
        backend = _quantization_backend(handle)
        if backend is not None:
            raise UnsupportedFormatError(
                f"safetensors stores plain tensors only; {backend}-quantized weights cannot be saved in it "
                "(export as pt2/torchscript, or save the float model)",
            )
        state = handle.model.state_dict()
    tensors = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor) or type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise UnsupportedFormatError(
                f"'{name}' is not a plain tensor and cannot be stored in safetensors"
            )
        # clone: safetensors refuses tensors that share storage (tied weights)
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    metadata = {"format": "pt", "robopt": _meta_json(handle)}
    save_file(tensors, str(path), metadata=metadata)


# --------------------------------------------------------------------------------------------
# Hugging Face transformers directories
# --------------------------------------------------------------------------------------------

# Files of an uploaded directory that the export writes anew; every other one (tokenizer, processor,
# normalisation statistics) is copied over unchanged.
_HF_WRITTEN = ("config.json", "generation_config.json")
_HF_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
HF_MAX_SHARD = "5GB"


def hf_quantization(handle: ModelHandle) -> tuple[Any, str]:
    """The quantization config transformers reads back for this version (None for float weights), and
    the runtime the directory needs; UnsupportedFormatError when transformers cannot express it.

    torchao tensor-subclass weights (weight-only int8/int4, dynamic int8 on CUDA) map to `TorchAoConfig`
    with the very layers and configs `quantize` used (`FqnToConfig`); bitsandbytes layers to
    `BitsAndBytesConfig`. torch.ao's dynamic int8 layers (the CPU path) and layers kept in float32
    behind casts in a half-precision model have no `from_pretrained` form.
    """
    import torch
    import transformers

    runtime = f"transformers>={transformers.__version__}"
    config: Any = None
    for step in handle.recipe:
        if step.get("tool") != "quantize":
            continue
        result = step.get("result") or {}
        method, backend = step.get("method"), result.get("backend")
        if result.get("exported_to_onnx"):
            raise UnsupportedFormatError(f"{method} ran in ONNX Runtime; the version is an ONNX graph")
        if method in ("fp16", "bf16"):
            if result.get("kept_float"):
                raise UnsupportedFormatError(
                    f"{method} kept {len(result['kept_float'])} layer(s) in float32 behind casts, which a "
                    "transformers directory cannot express (from_pretrained loads one dtype)"
                )
            continue
        if config is not None:
            raise UnsupportedFormatError("more than one weight quantization step has no from_pretrained form")
        layers = [_inner_name(n) for n in result.get("layers") or []]
        if backend == "torchao":
            import torchao
            from torchao.quantization import FqnToConfig
            from transformers import TorchAoConfig

            from tools.quantization import torchao_config

            per_layer = {name: torchao_config(str(method)) for name in layers}
            config = TorchAoConfig(quant_type=FqnToConfig(per_layer), modules_to_not_convert=[])
            runtime = f"transformers>={transformers.__version__} with torchao>={torchao.__version__}"
        elif backend == "bitsandbytes":
            import bitsandbytes
            from transformers import BitsAndBytesConfig

            kept = [_inner_name(n) for n in result.get("kept_float") or []]
            if method == "bnb_int8":
                config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=kept or None)
            else:
                config = BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_compute_dtype=torch.bfloat16,
                    llm_int8_skip_modules=kept or None,
                )
            runtime = (
                f"transformers>={transformers.__version__} with bitsandbytes>={bitsandbytes.__version__} "
                "(CUDA)"
            )
        else:
            raise UnsupportedFormatError(
                f"{method} with {backend} (torch.ao's dynamic int8 layers) has no quantization config "
                "that transformers' from_pretrained reads; torchao's int8 is a different scheme, so it "
                "would not be this version"
            )
    return config, runtime


def export_hf_directory(handle: ModelHandle, directory: Path | str, *, verify: bool = True) -> dict[str, Any]:
    """Write a transformers model as the directory `from_pretrained` loads: `config.json` (with its
    `quantization_config` when quantized) + safetensors (sharded above HF_MAX_SHARD), fp16/bf16 kept,
    and the uploaded directory's other files (tokenizer, processor, statistics) copied over.

    With `verify` the directory is loaded back with the model's own class (`from_pretrained`, no remote
    code) and must give the version's outputs on the example inputs; a version it cannot express
    (UnsupportedFormatError, see `hf_quantization`), or one that does not load back the same (a pruned
    width config.json does not state), leaves no directory behind. Returns what was written: the
    runtime the directory needs, its dtype, its quantization method, its files.
    """
    import shutil

    import torch

    from tools.model_dirs import transformers_model

    directory = Path(directory)
    _require_torch(handle, "hf_directory")
    inner = transformers_model(handle.model)
    if inner is None:
        openvla = handle.architecture is not None and handle.architecture.name == "vla"
        raise UnsupportedFormatError(
            "only a Hugging Face transformers model can be written as a transformers directory"
            + (
                "; an OpenVLA checkpoint runs as robopt's vla architecture, which is not written back "
                "in OpenVLA's own layout"
                if openvla
                else ""
            )
        )
    quantization, runtime = hf_quantization(handle)
    if directory.exists() and any(directory.iterdir()):
        raise UnsupportedFormatError(f"'{directory}' exists and is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    saved_attrs = {k: getattr(inner, k) for k in ("hf_quantizer",) if hasattr(inner, k)}
    saved_quant = getattr(inner.config, "quantization_config", None)
    try:
        if quantization is not None:
            from transformers.quantizers import AutoHfQuantizer

            # save_pretrained flattens quantized weights through the model's quantizer (torchao's tensor
            # subclasses into plain tensors + metadata) and writes its config into config.json.
            inner.config.quantization_config = quantization
            inner.hf_quantizer = AutoHfQuantizer.from_config(quantization, pre_quantized=True)
        inner.save_pretrained(str(directory), max_shard_size=HF_MAX_SHARD)
        source = handle.source_path
        if source is not None and Path(source).is_dir():
            for item in sorted(Path(source).rglob("*")):
                rel = item.relative_to(source)
                if not item.is_file() or item.is_symlink() or rel.name in _HF_WRITTEN:
                    continue
                if len(rel.parts) == 1 and rel.name.endswith(_HF_WEIGHT_SUFFIXES):
                    continue
                target = directory / rel
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(item, target)
        if verify:
            _verify_hf_directory(handle, inner, directory)
    except BaseException as exc:
        shutil.rmtree(directory, ignore_errors=True)
        if isinstance(exc, UnsupportedFormatError) or not isinstance(exc, Exception):
            raise
        raise UnsupportedFormatError(
            "the model could not be written as a transformers directory", details=str(exc)[:2000]
        ) from exc
    finally:
        for key, value in saved_attrs.items():
            setattr(inner, key, value)
        if quantization is not None and "hf_quantizer" not in saved_attrs and hasattr(inner, "hf_quantizer"):
            del inner.hf_quantizer
        if saved_quant is None:
            if hasattr(inner.config, "quantization_config"):
                del inner.config.quantization_config
        else:
            inner.config.quantization_config = saved_quant
    floats = [p.dtype for p in inner.parameters() if p.is_floating_point()]
    dtype = str(max(set(floats), key=floats.count)).removeprefix("torch.") if floats else "float32"
    return {
        "format": "hf_directory",
        "runtime": runtime,
        "model_class": type(inner).__name__,
        "dtype": dtype,
        "quantization": _quant_method(quantization),
        "files": sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()),
        "load_with": f"transformers.{type(inner).__name__}.from_pretrained(<directory>)",
        "torch": torch.__version__.split("+")[0],
    }


def _quant_method(quantization: Any) -> str | None:
    method = getattr(quantization, "quant_method", None)
    return None if method is None else str(getattr(method, "value", method))


def _inner_name(name: str) -> str:
    """A layer name of the handle's model (a TransformersModule) as the transformers model names it."""
    return name.removeprefix("model.")


def _verify_hf_directory(handle: ModelHandle, inner: Any, directory: Path) -> None:
    """Load the directory back with its own class and compare outputs with the version's."""
    import torch

    from tools.model_dirs import wrap_transformers_model

    try:
        reloaded = (
            type(inner).from_pretrained(str(directory), local_files_only=True, trust_remote_code=False).eval()
        )
    except Exception as exc:
        raise UnsupportedFormatError(
            "the written directory does not load back with from_pretrained (a pruned width that "
            "config.json does not state, or weights its class cannot take)",
            details=str(exc)[:2000],
        ) from exc
    reloaded = reloaded.to(handle.device)
    wrapped = wrap_transformers_model(reloaded, list(handle.model.input_names))
    args = to_tensors(handle, example_inputs(handle))
    with torch.inference_mode():
        want = handle.model(*args)
        got = wrapped(*args)
    for key, w in want.items():
        g = got.get(key)
        if g is None or g.shape != w.shape:
            raise UnsupportedFormatError(f"the reloaded directory's output '{key}' differs in shape")
        w, g = w.float(), g.float()
        if w.is_floating_point() and not torch.allclose(
            w, g, rtol=1e-3, atol=1e-3 * max(1.0, w.abs().max().item())
        ):
            raise UnsupportedFormatError(
                f"the reloaded directory's output '{key}' differs from the version's "
                f"(max difference {(w - g).abs().max().item():.3g})"
            )
