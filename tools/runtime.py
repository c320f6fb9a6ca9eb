"""Running a handle: one `forward` for torch and ONNX models, and inputs synthesized from a signature.

Every tool that needs outputs (benchmark, evaluate, export checks) goes through here, so a model
is always called the same way: positional inputs in the order of `handle.inputs`. `forward` gives
the first output; `forward_all` every output by name (tuples, dicts, transformers `ModelOutput`s,
ONNX graphs with several outputs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tools.errors import DataMismatchError, InvalidModelError, UnsupportedFormatError
from tools.handle import InputSpec, ModelHandle

_NP_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "bool": np.bool_,
    "uint8": np.uint8,
}


def synthesize_inputs(
    specs: list[InputSpec], batch_size: int = 1, *, seed: int = 0, dynamic_len: int = 16
) -> dict[str, np.ndarray]:
    """Deterministic inputs for a signature: batch axis = batch_size, other dynamic axes = dynamic_len."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = [
            (batch_size if i == 0 else dynamic_len) if d is None else int(d) for i, d in enumerate(spec.shape)
        ]
        dtype = _NP_DTYPES.get(spec.dtype, np.float32)
        if np.issubdtype(dtype, np.integer):
            low = int(spec.low if spec.low is not None else 0)
            high = int(spec.high if spec.high is not None else 2)
            out[spec.name] = rng.integers(low, high, size=shape, dtype=dtype)
        elif dtype == np.bool_:
            low = int(spec.low if spec.low is not None else 0)  # low=1: all true (a mask)
            out[spec.name] = rng.integers(low, 2, size=shape).astype(np.bool_)
        else:
            low = spec.low if spec.low is not None else -1.0
            high = spec.high if spec.high is not None else 1.0
            out[spec.name] = rng.uniform(low, high, size=shape).astype(dtype)
    return out


def check_inputs(specs: list[InputSpec], inputs: dict[str, np.ndarray]) -> None:
    """Raise DataMismatchError unless `inputs` has exactly the signature's names and fixed axes."""
    expected = [s.name for s in specs]
    if sorted(inputs) != sorted(expected):
        raise DataMismatchError(
            f"input names {sorted(inputs)} do not match the model's inputs {expected}",
        )
    for spec in specs:
        arr = inputs[spec.name]
        if arr.ndim != len(spec.shape):
            raise DataMismatchError(
                f"input '{spec.name}' has {arr.ndim} dimensions, the model expects {len(spec.shape)} "
                f"(shape {spec.shape})"
            )
        for axis, (have, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
            if want is not None and have != want:
                raise DataMismatchError(
                    f"input '{spec.name}' axis {axis} is {have}, "
                    f"the model expects {want} (shape {spec.shape})"
                )


def slice_batch(inputs: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: v[start:stop] for k, v in inputs.items()}


def forward(handle: ModelHandle, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """One forward pass; returns the first output as float32 numpy on the host (`forward_all`: every one)."""
    if handle.runtime == "onnx":
        return np.asarray(_onnx_run(handle, inputs)[0]).astype(np.float32)
    with torch.inference_mode():
        out = torch_forward(handle, to_tensors(handle, inputs))
    return out.detach().float().cpu().numpy()


def forward_all(handle: ModelHandle, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One forward pass; every output by name, in the model's order (see `output_values` for the names).

    Floating outputs come as float32, integer and boolean ones keep their dtype. An output that is not
    a tensor (None, a string, a number, an ONNX sequence or map) raises InvalidModelError naming it.
    """
    values = output_values(handle, inputs)
    odd = {name: type(v).__name__ for name, v in values.items() if not isinstance(v, np.ndarray)}
    if odd:
        listed = ", ".join(f"'{n}' ({t})" for n, t in odd.items())
        raise InvalidModelError(
            f"the model returns outputs that are not tensors: {listed}; only tensors can be compared. "
            "Make forward() return tensors only (a tensor, a tuple or a dict of tensors)",
            details=f"outputs: {', '.join(values)}",
        )
    return values


def output_values(handle: ModelHandle, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """One forward pass; every output by name, non-tensor ones (None, strings, numbers) left as they are.

    Names: an ONNX graph's output names. For torch: "output" for a single tensor; dict keys (and a
    transformers `ModelOutput`'s fields) for a dict; "output_0", "output_1", ... for a tuple or list
    (a named tuple's field names); nested containers join with "." ("output_1.0", "hidden.0").
    Tensors become numpy arrays on the host: floating ones float32 (fp16 / bf16 upcast), quantized ones
    dequantized, integer and boolean ones unchanged.
    """
    if handle.runtime == "onnx":
        names = [o.name for o in onnx_session(handle).get_outputs()]
        results = _onnx_run(handle, inputs)
        return {
            name: np.asarray(v).astype(np.float32) if _float_array(v) else v
            for name, v in zip(names, results, strict=True)
        }
    with torch.inference_mode():
        out: Any = handle.model(*to_tensors(handle, inputs))
    return {name: _to_numpy(v) for name, v in flatten_outputs(out, "")}


def _onnx_run(handle: ModelHandle, inputs: dict[str, np.ndarray]) -> list[Any]:
    session = onnx_session(handle)
    feeds = {}
    for spec, meta in zip(handle.inputs, session.get_inputs(), strict=False):
        arr = inputs[spec.name]
        if meta.type == "tensor(float16)":
            arr = arr.astype(np.float16)
        feeds[meta.name] = arr
    return list(session.run(None, feeds))


def _float_array(v: Any) -> bool:
    return isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)


def flatten_outputs(out: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A torch model's raw output as (name, value) pairs, named as `output_values` describes."""
    if isinstance(out, torch.Tensor):
        return [(prefix or "output", out)]
    if isinstance(out, dict):  # transformers' ModelOutput is an OrderedDict of its non-None fields
        items: list[tuple[str, Any]] = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, (tuple, list)):
        fields = getattr(out, "_fields", None)  # a named tuple
        keys = list(fields) if fields else [str(i) if prefix else f"output_{i}" for i in range(len(out))]
        items = list(zip(keys, out, strict=True))
    else:
        return [(prefix or "output", out)]
    flat: list[tuple[str, Any]] = []
    for key, value in items:
        flat.extend(flatten_outputs(value, f"{prefix}.{key}" if prefix else key))
    return flat


def _to_numpy(v: Any) -> Any:
    if not isinstance(v, torch.Tensor):
        return v
    t = v.detach()
    if t.is_quantized:
        t = t.dequantize()
    if t.is_floating_point():
        t = t.float()
    return t.cpu().numpy()


def torch_forward(handle: ModelHandle, tensors: list[torch.Tensor]) -> torch.Tensor:
    out: Any = handle.model(*tensors)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out


def model_dtype(handle: ModelHandle) -> torch.dtype:
    """The floating dtype the torch model computes in (fp16/bf16 after a cast), float32 otherwise."""
    if handle.runtime != "torch":
        return torch.float32
    for t in list(handle.model.parameters()) + list(handle.model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def to_tensors(handle: ModelHandle, inputs: dict[str, np.ndarray]) -> list[torch.Tensor]:
    dtype = model_dtype(handle)
    tensors = []
    for spec in handle.inputs:
        t = torch.from_numpy(np.ascontiguousarray(inputs[spec.name]))
        if t.is_floating_point():
            t = t.to(dtype)
        tensors.append(t.to(handle.device))
    return tensors


# Graph metadata naming the session options a graph needs (weight_only_int8: fold its DequantizeLinear
# nodes into float weights at load, so it runs at the float graph's speed).
SESSION_CONFIG_KEY = "onnxruntime.session_config"
FOLD_WEIGHTS_CONFIG = {"session.disable_quant_qdq": "1"}


def set_session_config(model: Any, config: dict[str, str]) -> None:
    """Record the session options the graph needs in its metadata (read by `session_config`)."""
    import json

    for prop in list(model.metadata_props):
        if prop.key == SESSION_CONFIG_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = SESSION_CONFIG_KEY, json.dumps(config, sort_keys=True)


def session_config(model: Any) -> dict[str, str]:
    """The session options a graph's metadata asks for (weight-only int8 graphs: fold the weights at load)."""
    import json

    for prop in model.metadata_props:
        if prop.key == SESSION_CONFIG_KEY:
            try:
                value = json.loads(prop.value)
            except ValueError:
                return {}
            # Only options known to be safe to take from a file: nothing that loads code or paths.
            if not isinstance(value, dict):
                return {}
            return {k: str(v) for k, v in value.items() if k in FOLD_WEIGHTS_CONFIG}
    return {}


def onnx_session(handle: ModelHandle) -> Any:
    """An ONNX Runtime session for the handle's graph, built once per handle."""
    session = handle.cache.get("ort_session")
    if session is None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        for key, value in session_config(handle.model).items():
            options.add_session_config_entry(key, value)  # weight-only int8: fold the weights at load
        providers = ["CPUExecutionProvider"]
        if handle.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            session = ort.InferenceSession(handle.model.SerializeToString(), options, providers=providers)
        except Exception as exc:
            if "NOT_IMPLEMENTED" not in str(exc):
                raise
            raise UnsupportedFormatError(
                "ONNX Runtime has no kernel for an operator of this graph (bfloat16 layers are the usual "
                "cause); convert the model to float16 or float32",
                details=str(exc)[:500],
            ) from exc
        handle.cache["ort_session"] = session
    return session
