"""`load_model`: a checked model file (or model directory) -> `ModelHandle`, with its input signature.

Every file first passes `tools.formats.validate_upload`, so nothing is unpickled that needs code.
The input signature (see tools.signatures) is, in order of precedence: an explicit `inputs` argument
(checked against the graph), what the file states (ONNX graph inputs, a torch.export program's
placeholders, the `robopt.json` entry our own exports write, a TorchScript graph read by its first
consumers, a transformers directory's model class and config), the registered architecture's, or the
evaluation data's names and shapes (checked against the graph's argument names).
`metadata["signature_source"]` says which; `signature_missing` names what is still unknown when there
is none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools.errors import InvalidArgumentError, InvalidModelError, UnsupportedFormatError
from tools.formats import extract_state_dict, onnx_input_specs, validate_eval_data, validate_upload
from tools.handle import ArchitectureRef, EvalData, InputSpec, ModelHandle
from tools.runtime import check_inputs
from tools.signatures import (
    Signature,
    merge_signature,
    onnx_value_ranges,
    parse_signature,
    program_value_ranges,
    torchscript_argument_names,
    torchscript_signature,
    traced_input_shapes,
)

# Extra file in TorchScript and .pt2 archives written by tools.exporting, holding the input signature.
TORCHSCRIPT_META = "robopt.json"

_CONVERSIONS = {
    ".pb": "a TensorFlow graph; convert it to ONNX with tf2onnx (python -m tf2onnx.convert) "
    "and upload the .onnx",
    ".h5": "a Keras model; convert it to ONNX with tf2onnx (tf2onnx.convert.from_keras) or keras2onnx "
    "and upload the .onnx",
}


def load_model(
    path: Path | str,
    *,
    architecture: ArchitectureRef | dict[str, Any] | str | None = None,
    eval_data: Path | str | EvalData | None = None,
    inputs: list[InputSpec] | None = None,
    device: str = "cpu",
) -> ModelHandle:
    """Load an ONNX, TorchScript, `.pt2` or state-dict file (state dicts need `architecture`), or a
    Hugging Face transformers directory (tools.model_dirs)."""
    path = Path(path)
    ext = "" if path.is_dir() else path.suffix.lower()
    if ext in _CONVERSIONS:
        raise UnsupportedFormatError(
            f"'{path.name}' is {_CONVERSIONS[ext]}; it is stored for inspection only and cannot be optimized"
        )
    report = validate_upload(path, ext)
    ref = _architecture_ref(architecture)
    sig = Signature(inputs=[])
    dtypes_known = report.format in ("onnx", "pt2")
    if report.format == "onnx":
        import onnx

        model: Any = onnx.load(str(path), load_external_data=False)
        runtime = "onnx"
        graph_specs = onnx_value_ranges(model, onnx_input_specs(model))
        sig = Signature(
            inputs=_merge_saved(graph_specs, _onnx_saved_meta(model), names=False),
            argument_names=[s.name for s in graph_specs],
        )
    elif report.format == "torchscript":
        model, sig = _load_torchscript(path, device)
        runtime = "torch"
    elif report.format == "pt2":
        model, sig = _load_pt2(path, device)
        runtime = "torch"
    elif report.format == "hf_directory":
        from tools.model_dirs import load_model_directory

        names = [s.name if isinstance(s, InputSpec) else str(s.get("name")) for s in inputs or []]
        loaded = load_model_directory(path, device=device, input_names=names or None)
        model, runtime = loaded.module, "torch"
        sig = Signature(
            inputs=loaded.inputs,
            missing=loaded.missing,
            notes=loaded.notes,
            argument_names=loaded.argument_names,
            source="config",
        )
        if loaded.architecture is not None and ref is None:
            ref = loaded.architecture  # an OpenVLA checkpoint: robopt's own vla architecture
    elif report.format in ("state_dict", "safetensors"):
        if ref is None:
            raise InvalidArgumentError(
                f"'{path.name}' holds only weights (a state dict); name its architecture to load it",
                details="e.g. architecture={'name': 'mlp_policy', 'config': {...}}; see tools.architectures",
            )
        model = _load_state_dict(path, report.format, ref, device)
        runtime = "torch"
    else:  # validate_upload only returns loadable formats for the extensions handled above
        raise UnsupportedFormatError(f"'{path.name}' ({report.format}) cannot be loaded")

    source = sig.source if sig.complete else None
    if ref is not None:
        from tools.architectures import canonical_ref, input_specs

        ref = canonical_ref(ref)
        if not sig.inputs:
            sig = Signature(inputs=input_specs(ref))
            source = "architecture"
    data = _eval_data(eval_data)
    if inputs is not None:
        given = parse_signature([s.model_dump() if isinstance(s, InputSpec) else s for s in inputs])
        specs = merge_signature(given, sig.inputs, sig.argument_names, dtypes_known=dtypes_known)
        source, missing = "given", []
    elif data is not None and (not sig.complete or sig.source == "graph"):
        # The evaluation data's names and shapes are the signature the user means (checked against
        # what the graph tells).
        specs = merge_signature(
            specs_from_data(data), sig.inputs, sig.argument_names, dtypes_known=dtypes_known
        )
        source, missing = "eval_data", []
    elif sig.complete:
        specs, missing = sig.inputs, []
    else:
        specs, missing = [], sig.missing or (["the model's inputs"] if runtime == "torch" and not ref else [])
    if data is not None and specs:
        check_inputs(specs, data.inputs)

    metadata: dict[str, Any] = {
        "size_bytes": report.size_bytes,
        "file_format": report.format,
        "extension": ext,
        "signature_source": source,
        "signature_missing": missing,
        "signature_notes": sig.notes,
    }
    if sig.argument_names:
        metadata["input_names"] = sig.argument_names
    return ModelHandle(
        runtime=runtime,  # type: ignore[arg-type]
        format=report.format,  # type: ignore[arg-type]
        model=model,
        inputs=specs,
        architecture=ref,
        source_path=path,
        eval_data=data,
        device=device,
        metadata=metadata,
    )


def require_inputs(handle: ModelHandle) -> list[InputSpec]:
    """The handle's input signature, or a clear error for a tool that needs one and has none."""
    if not handle.inputs:
        raise InvalidArgumentError(
            missing_signature_message(handle.metadata), details=signature_hint(handle.metadata)
        )
    return handle.inputs


def missing_signature_message(metadata: dict[str, Any]) -> str:
    missing = "; ".join(metadata.get("signature_missing") or []) or "the model's inputs"
    return (
        f"the model's input signature is incomplete ({missing}); give an input_signature (names, shapes with "
        "null for dynamic axes, dtypes) or attach evaluation data"
    )


def signature_hint(metadata: dict[str, Any]) -> str | None:
    names = metadata.get("input_names")
    if not names:
        return None
    example = ", ".join(f'{{"name": "{n}", "shape": [null, ...], "dtype": "float32"}}' for n in names)
    return f"the model's forward takes {names}; e.g. input_signature=[{example}]"


def specs_from_data(data: EvalData) -> list[InputSpec]:
    """A signature from evaluation arrays: their names, a dynamic batch axis, the rest fixed."""
    specs = []
    for name, arr in data.inputs.items():
        spec = InputSpec(name=name, shape=[None, *(int(d) for d in arr.shape[1:])], dtype=str(arr.dtype))
        if arr.dtype.kind in "iu":
            spec.low, spec.high = float(arr.min()), float(arr.max()) + 1
        specs.append(spec)
    return specs


def _architecture_ref(architecture: ArchitectureRef | dict[str, Any] | str | None) -> ArchitectureRef | None:
    if architecture is None:
        return None
    from tools.architectures import as_ref

    return as_ref(architecture)


def _eval_data(eval_data: Path | str | EvalData | None) -> EvalData | None:
    if eval_data is None or isinstance(eval_data, EvalData):
        return eval_data
    path = Path(eval_data)
    return validate_eval_data(path, path.suffix)


def _torch_dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _load_torchscript(path: Path, device: str) -> tuple[Any, Signature]:
    import torch

    extra = {TORCHSCRIPT_META: ""}
    module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    module.eval()
    saved = _saved_specs(extra[TORCHSCRIPT_META])
    if saved:  # our own export states the signature
        return module, Signature(inputs=saved, argument_names=torchscript_argument_names(module))
    return module, torchscript_signature(module, traced_input_shapes(path))


def _merge_saved(specs: list[InputSpec], saved: list[InputSpec], *, names: bool = True) -> list[InputSpec]:
    """Our own exports store the signature: keep its names and ranges, the file's shapes and dtypes."""
    if len(saved) != len(specs):
        return specs
    return [
        s.model_copy(update={"low": m.low, "high": m.high, **({"name": m.name} if names else {})})
        for s, m in zip(specs, saved, strict=True)
    ]


def _onnx_saved_meta(model: Any) -> list[InputSpec]:
    for prop in model.metadata_props:
        if prop.key == TORCHSCRIPT_META:
            return _saved_specs(prop.value)
    return []


def _saved_specs(text: str | bytes) -> list[InputSpec]:
    """The input signature tools.exporting stores beside the model (empty when absent)."""
    if not text:
        return []
    try:
        meta = json.loads(text)
        return [InputSpec.model_validate(s) for s in meta.get("inputs", [])]
    except (json.JSONDecodeError, ValueError, AttributeError) as exc:
        raise InvalidModelError(f"the model file's {TORCHSCRIPT_META} is malformed: {exc}") from exc


def _load_pt2(path: Path, device: str) -> tuple[Any, Signature]:
    import torch

    extra = {TORCHSCRIPT_META: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:
        raise InvalidModelError(f"the torch.export program could not be loaded: {exc}") from exc
    user_inputs = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise InvalidModelError(f"the exported program's input '{node.name}' is not a tensor")
        shape = [int(d) if isinstance(d, int) else None for d in val.shape]
        specs.append(InputSpec(name=node.name, shape=shape, dtype=_torch_dtype_name(val.dtype)))
    specs = _merge_saved(program_value_ranges(program, specs), _saved_specs(extra[TORCHSCRIPT_META]))
    names = [s.name for s in specs]
    module = program.module()
    # Its linear / conv / batch-norm calls become real submodules, so every torch tool can edit them.
    from tools.graph_modules import lift_layers

    lift_layers(module)
    if device != "cpu":
        module = module.to(device)
    return module, Signature(inputs=specs, argument_names=names)


def _load_state_dict(path: Path, fmt: str, ref: ArchitectureRef, device: str) -> Any:
    import torch

    from tools.architectures import build_model

    if fmt == "safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = extract_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
        if state is None:
            raise InvalidModelError(f"'{path.name}' holds no state_dict")
    model = build_model(ref)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} ({', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} ({', '.join(unexpected[:4])})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} with other shapes ({k}: file {tuple(state[k].shape)}, "
                f"architecture {tuple(own[k].shape)})"
            )
        raise InvalidModelError(
            f"the weights do not fit architecture '{ref.name}': {'; '.join(parts)}",
            details="check the architecture name and config given at upload",
        )
    # Keep the file's dtype (a bf16 checkpoint stays bf16).
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model = model.to(next(iter(dtypes)))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
