"""`load_model`: a checked model file -> `ModelHandle`, with its input signature.

Every file first passes `tools.formats.validate_upload`, so nothing is unpickled that needs code.
The input signature comes from the file where it says so (ONNX graph inputs, a torch.export
program's placeholders, the `robopt.json` entry our own TorchScript export writes), else from the
registered architecture, else from the evaluation data, else from an explicit `inputs` argument.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools.errors import InvalidArgumentError, InvalidModelError, UnsupportedFormatError
from tools.formats import extract_state_dict, onnx_input_specs, validate_eval_data, validate_upload
from tools.handle import ArchitectureRef, EvalData, InputSpec, ModelHandle
from tools.runtime import check_inputs

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
    """Load an ONNX, TorchScript, `.pt2` or state-dict file (state dicts need `architecture`)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext in _CONVERSIONS:
        raise UnsupportedFormatError(
            f"'{path.name}' is {_CONVERSIONS[ext]}; it is stored for inspection only and cannot be optimized"
        )
    report = validate_upload(path, ext)
    ref = _architecture_ref(architecture)
    if report.format == "onnx":
        import onnx

        model: Any = onnx.load(str(path), load_external_data=False)
        runtime, specs = "onnx", _merge_saved(onnx_input_specs(model), _onnx_saved_meta(model), names=False)
    elif report.format == "torchscript":
        model, specs = _load_torchscript(path, device)
        runtime = "torch"
    elif report.format == "pt2":
        model, specs = _load_pt2(path, device)
        runtime = "torch"
    elif report.format in ("state_dict", "safetensors"):
        if ref is None:
            raise InvalidArgumentError(
                f"'{path.name}' holds only weights (a state dict); name its architecture to load it",
                details="e.g. architecture={'name': 'mlp_policy', 'config': {...}}; see tools.architectures",
            )
        model = _load_state_dict(path, report.format, ref, device)
        runtime, specs = "torch", []
    else:  # validate_upload only returns loadable formats for the extensions handled above
        raise UnsupportedFormatError(f"'{path.name}' ({report.format}) cannot be loaded")

    if ref is not None:
        from tools.architectures import canonical_ref, input_specs

        ref = canonical_ref(ref)
        specs = specs or input_specs(ref)
    data = _eval_data(eval_data)
    if inputs is not None:
        specs = [InputSpec.model_validate(s) for s in inputs]
    if not specs and data is not None:
        specs = specs_from_data(data)
    if data is not None and specs:
        check_inputs(specs, data.inputs)

    return ModelHandle(
        runtime=runtime,  # type: ignore[arg-type]
        format=report.format,  # type: ignore[arg-type]
        model=model,
        inputs=specs,
        architecture=ref,
        source_path=path,
        eval_data=data,
        device=device,
        metadata={"size_bytes": report.size_bytes, "file_format": report.format, "extension": ext},
    )


def require_inputs(handle: ModelHandle) -> list[InputSpec]:
    """The handle's input signature, or a clear error for a tool that needs one and has none."""
    if not handle.inputs:
        names = handle.metadata.get("input_names")
        raise InvalidArgumentError(
            "the model's input signature is unknown (a TorchScript file without shape information); "
            "pass `inputs` (names, shapes, dtypes) or evaluation data when loading it",
            details=f"forward() takes {names}" if names else None,
        )
    return handle.inputs


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


def _load_torchscript(path: Path, device: str) -> tuple[Any, list[InputSpec]]:
    import torch

    extra = {TORCHSCRIPT_META: ""}
    module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    module.eval()
    return module, _saved_specs(extra[TORCHSCRIPT_META])


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


def _load_pt2(path: Path, device: str) -> tuple[Any, list[InputSpec]]:
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
    specs = _merge_saved(specs, _saved_specs(extra[TORCHSCRIPT_META]))
    module = program.module()
    if device != "cpu":
        module = module.to(device)
    return module, specs


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
