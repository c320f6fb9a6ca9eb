"""Running a handle: one `forward` for torch and ONNX models, and inputs synthesized from a signature.

Every tool that needs outputs (benchmark, evaluate, export checks) goes through here, so a model
is always called the same way: positional inputs in the order of `handle.inputs`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tools.errors import DataMismatchError, UnsupportedFormatError
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
            out[spec.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
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
    """One forward pass; returns the first output as float32 numpy on the host."""
    if handle.runtime == "onnx":
        session = onnx_session(handle)
        feeds = {}
        for spec, meta in zip(handle.inputs, session.get_inputs(), strict=False):
            arr = inputs[spec.name]
            if meta.type == "tensor(float16)":
                arr = arr.astype(np.float16)
            feeds[meta.name] = arr
        return np.asarray(session.run(None, feeds)[0]).astype(np.float32)
    with torch.inference_mode():
        out = torch_forward(handle, to_tensors(handle, inputs))
    return out.detach().float().cpu().numpy()


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


def onnx_session(handle: ModelHandle) -> Any:
    """An ONNX Runtime session for the handle's graph, built once per handle."""
    session = handle.cache.get("ort_session")
    if session is None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
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
