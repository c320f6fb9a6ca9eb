"""Accuracy of a candidate model, relative to the reference it was derived from.

Which metric (`EvalResult.metric`):
- With targets (the task metric, evaluated for candidate and reference on the same data):
  - `accuracy`: integer class targets [N] and logits [N, C]: arg-max accuracy.
  - `action_token_accuracy`: integer bin targets [N, D] and logits [N, D, bins]: the fraction of
    action tokens (all samples, all D dimensions) whose arg-max bin is the target bin. Continuous
    action targets in [-1, 1] (floats) are first put in the same uniform bins.
  - `within_tolerance`: float targets shaped like the output (regression, e.g. continuous
    actions): the fraction of samples whose error, in units of each target dimension's standard
    deviation, has an RMS over dimensions of at most `tolerance` (default 0.25, a quarter of a
    standard deviation). `mse` is reported beside it.
- Without targets (fidelity to the reference's outputs on the same inputs):
  - `top1_agreement` for logits and action tokens (arg-max over the last axis agrees),
  - `within_tolerance_of_reference` for regression outputs (the rule above with the reference's
    outputs as targets).
`cosine_similarity` (mean over samples of the flattened outputs) and `relative_error`
(||candidate - reference|| / ||reference|| over all outputs) are always reported.
`accuracy_retained` = value / reference_value (the reference is evaluated on the same data; a
candidate can retain more than 1.0 when it beats the reference on the targets).

Data: the `data` argument, else the candidate's evaluation data, else the reference's, else
`num_samples` inputs synthesized from the input signature with a fixed seed. Batches of
`batch_size` keep memory bounded.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.arguments import check_arguments
from tools.errors import DataMismatchError, InvalidArgumentError
from tools.handle import EvalData, ModelHandle
from tools.runtime import check_inputs, forward, slice_batch, synthesize_inputs

DEFAULT_TOLERANCE = 0.25
OutputKind = Literal["logits", "regression", "action_tokens"]
MetricName = Literal[
    "accuracy", "action_token_accuracy", "within_tolerance", "top1_agreement", "within_tolerance_of_reference"
]


class EvalResult(BaseModel):
    metric: MetricName = Field(
        description="Which metric `value` is (task metric with targets, else fidelity)."
    )
    value: float = Field(description="The candidate's metric.")
    reference_value: float = Field(description="The reference's metric on the same data.")
    accuracy_retained: float = Field(description="value / reference_value.")
    uses_targets: bool
    top1_agreement: float | None = Field(None, description="Arg-max agreement with the reference (logits).")
    cosine_similarity: float
    relative_error: float
    mse: float | None = Field(None, description="Mean squared error to the targets (regression).")
    tolerance: float | None = Field(None, description="Tolerance of the within-tolerance metrics (in stds).")
    output_kind: OutputKind
    num_samples: int
    data_source: Literal["given", "eval_data", "reference_eval_data", "synthesized"]


def evaluate(
    handle: ModelHandle,
    *,
    reference: ModelHandle,
    data: EvalData | None = None,
    output_kind: OutputKind | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    num_samples: int = 256,
    batch_size: int = 64,
    seed: int = 0,
) -> EvalResult:
    """Evaluate `handle` against `reference` (usually the model it was optimized from)."""
    if batch_size < 1 or num_samples < 1:
        raise InvalidArgumentError("batch_size and num_samples must be positive")
    if not tolerance > 0:
        raise InvalidArgumentError(f"tolerance must be positive, got {tolerance}")
    if not isinstance(reference, ModelHandle):
        raise InvalidArgumentError(f"reference must be a model handle, got {type(reference).__name__}")
    check_arguments(
        "evaluate",
        output_kind=output_kind,
        tolerance=tolerance,
        num_samples=num_samples,
        batch_size=batch_size,
        seed=seed,
    )
    data, source = _pick_data(handle, reference, data, num_samples, seed)
    check_inputs(handle.inputs, data.inputs)
    if [s.name for s in reference.inputs] and sorted(s.name for s in reference.inputs) != sorted(data.inputs):
        raise DataMismatchError(
            "the reference model's inputs differ from the candidate's; compare like with like"
        )
    n = data.num_samples
    if n == 0:
        raise DataMismatchError("the evaluation data holds no samples")
    targets = data.targets
    if targets is not None and len(targets) != n:
        raise DataMismatchError(f"{len(targets)} targets for {n} input samples")

    cand = _outputs(handle, data.inputs, n, batch_size)
    ref = _reference_outputs(reference, data, source, n, batch_size, seed)
    if cand.shape != ref.shape:
        raise InvalidArgumentError(
            f"the candidate's output shape {list(cand.shape)} differs from the reference's {list(ref.shape)}"
        )
    kind = output_kind or _output_kind(handle, reference, ref, targets)

    cosine = _cosine(cand, ref)
    rel = float(np.linalg.norm(cand - ref) / max(float(np.linalg.norm(ref)), 1e-12))
    top1 = (
        float(np.mean(cand.argmax(-1) == ref.argmax(-1))) if kind != "regression" and ref.ndim >= 2 else None
    )
    mse: float | None = None
    tol: float | None = None

    if targets is not None:
        metric, value, ref_value, mse, tol = _task_metric(cand, ref, np.asarray(targets), kind, tolerance)
    elif kind == "regression":
        metric, tol = "within_tolerance_of_reference", tolerance
        value = _within_tolerance(cand, ref, _std(ref), tolerance)
        ref_value = 1.0
    else:
        metric, value, ref_value = "top1_agreement", float(top1 if top1 is not None else 0.0), 1.0

    return EvalResult(
        metric=metric,
        value=value,
        reference_value=ref_value,
        accuracy_retained=_ratio(value, ref_value),
        uses_targets=targets is not None,
        top1_agreement=top1,
        cosine_similarity=cosine,
        relative_error=rel,
        mse=mse,
        tolerance=tol,
        output_kind=kind,
        num_samples=n,
        data_source=source,
    )


def _pick_data(
    handle: ModelHandle, reference: ModelHandle, data: EvalData | None, num_samples: int, seed: int
) -> tuple[EvalData, Any]:
    if data is not None:
        return data, "given"
    if handle.eval_data is not None and handle.eval_data.inputs:
        return handle.eval_data, "eval_data"
    if reference.eval_data is not None and reference.eval_data.inputs:
        return reference.eval_data, "reference_eval_data"
    if not handle.inputs:
        raise InvalidArgumentError("the model has no input signature and no evaluation data to evaluate on")
    return EvalData(inputs=synthesize_inputs(handle.inputs, num_samples, seed=seed)), "synthesized"


def _outputs(handle: ModelHandle, inputs: dict[str, np.ndarray], n: int, batch_size: int) -> np.ndarray:
    chunks = [
        forward(handle, slice_batch(inputs, i, min(i + batch_size, n))) for i in range(0, n, batch_size)
    ]
    out = np.concatenate(chunks, axis=0).astype(np.float32)
    if not np.isfinite(out).all():
        # A broken candidate (overflow in fp16, say) scores as it is; NaNs must not poison the sums.
        out = np.nan_to_num(out, nan=0.0, posinf=3e38, neginf=-3e38)
    return out


def _reference_outputs(
    reference: ModelHandle, data: EvalData, source: str, n: int, batch_size: int, seed: int
) -> np.ndarray:
    """The reference's outputs, cached on its handle: an agent evaluates many candidates against it."""
    if source == "synthesized":
        key: tuple[Any, ...] = ("synthesized", seed, n, tuple(s.model_dump_json() for s in reference.inputs))
        inputs_obj: Any = None
    else:
        key, inputs_obj = ("data", id(data.inputs), n), data.inputs
    hit = reference.cache.get("evaluate_reference_outputs")
    # The inputs object itself is kept and compared, so a recycled id() cannot alias other data.
    if hit is not None and hit[0] == key and hit[1] is inputs_obj:
        return hit[2]
    out = _outputs(reference, data.inputs, n, batch_size)
    reference.cache["evaluate_reference_outputs"] = (key, inputs_obj, out)
    return out


def _output_kind(
    handle: ModelHandle, reference: ModelHandle, out: np.ndarray, targets: np.ndarray | None
) -> OutputKind:
    for h in (handle, reference):
        if h.metadata.get("output_kind") in ("logits", "regression", "action_tokens"):
            return h.metadata["output_kind"]
        if h.architecture is not None:
            from tools.architectures import output_kind

            try:
                return output_kind(h.architecture)
            except Exception:  # an unregistered name: fall back to the shapes below
                pass
    if targets is not None:
        t = np.asarray(targets)
        if _integral(t) and t.ndim == out.ndim - 1:
            return "action_tokens" if out.ndim >= 3 else "logits"
        return "regression"
    if out.ndim >= 3:
        return "action_tokens"
    return "logits" if out.ndim == 2 and out.shape[1] > 1 else "regression"


def _integral(t: np.ndarray) -> bool:
    if np.issubdtype(t.dtype, np.integer) or t.dtype == np.bool_:
        return True
    return bool(np.issubdtype(t.dtype, np.floating) and t.size and np.all(np.mod(t, 1) == 0))


def _task_metric(
    cand: np.ndarray, ref: np.ndarray, targets: np.ndarray, kind: OutputKind, tolerance: float
) -> tuple[Any, float, float, float | None, float | None]:
    if (
        kind == "action_tokens"
        and targets.ndim == cand.ndim - 1
        and np.issubdtype(targets.dtype, np.floating)
        and (not _integral(targets) or float(targets.min(initial=0.0)) < 0.0)
    ):
        # Continuous actions in [-1, 1]: score them in the model's own bins (OpenVLA's tokenizer).
        import torch

        from tools.architectures import actions_to_bins

        targets = actions_to_bins(torch.from_numpy(targets.astype(np.float32)), cand.shape[-1]).numpy()
    if kind in ("logits", "action_tokens") and _integral(targets) and targets.ndim == cand.ndim - 1:
        labels = targets.astype(np.int64)
        if labels.shape != cand.shape[:-1]:
            raise DataMismatchError(f"targets of shape {list(labels.shape)} for outputs {list(cand.shape)}")
        metric = "action_token_accuracy" if cand.ndim >= 3 else "accuracy"
        value = float(np.mean(cand.argmax(-1) == labels))
        ref_value = float(np.mean(ref.argmax(-1) == labels))
        return metric, value, ref_value, None, None
    t = targets.astype(np.float32)
    if t.shape != cand.shape:
        if t.size == cand.size:
            t = t.reshape(cand.shape)
        else:
            raise DataMismatchError(
                f"targets of shape {list(targets.shape)} match neither classes nor outputs {list(cand.shape)}"
            )
    std = _std(t)
    value = _within_tolerance(cand, t, std, tolerance)
    ref_value = _within_tolerance(ref, t, std, tolerance)
    return "within_tolerance", value, ref_value, float(np.mean((cand - t) ** 2)), tolerance


def _std(t: np.ndarray) -> np.ndarray:
    flat = t.reshape(t.shape[0], -1)
    std = flat.std(axis=0)
    # Constant dimensions: fall back to the mean spread so one zero-variance column can't divide by 0.
    fallback = float(std[std > 0].mean()) if np.any(std > 0) else 1.0
    return np.where(std > 0, std, fallback)


def _within_tolerance(pred: np.ndarray, target: np.ndarray, std: np.ndarray, tolerance: float) -> float:
    err = (pred.reshape(pred.shape[0], -1) - target.reshape(target.shape[0], -1)) / std
    rms = np.sqrt(np.mean(err**2, axis=1))
    return float(np.mean(rms <= tolerance))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64)
    num = np.sum(a2 * b2, axis=1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    both_zero = den == 0
    cos = np.where(both_zero, np.where(np.all(a2 == b2, axis=1), 1.0, 0.0), num / np.where(both_zero, 1, den))
    return float(np.mean(cos))


def _ratio(value: float, reference_value: float) -> float:
    if reference_value > 0:
        return value / reference_value
    # A reference that scores 0 leaves nothing to retain: equal or better counts as all of it.
    return 1.0 if value >= reference_value else 0.0
