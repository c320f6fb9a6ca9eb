"""Accuracy of a candidate model, relative to the reference it was derived from, with the metric that fits.

Every output of the model is scored (`forward_all`: tuples, dicts, transformers `ModelOutput`s, ONNX
graphs with several outputs), each with the metric of its kind; the result's top-level fields are
those of the gating output: the one named by `output`, else the output that retains the least.

Which kind an output is (`OutputResult.output_kind`), first match wins: the `output_kind` argument
(like `metric`: for the output named by `output`, else for every output);
the handle's `metadata["output_kind"]` (a kind for the first output, or a dict by output name); a
registered architecture's kind (first output); the evaluation targets' shape (the output they score);
else the evidence `tools.outputs.guess_kind` reads (output names, the transformers class and config,
the operation that produced the output, dtype, values, shape). `metric_reason` says which, and says
"ambiguous" when only the shape decided.

Which metric (`metric`), unless the `metric` argument forces one (refused when it does not fit the
output: `check_metric`):
- With targets (the task metric, evaluated for candidate and reference on the same data; targets
  score the named `output`, else the first output, the other outputs are scored by fidelity):
  - `accuracy`: integer class targets [N] and logits [N, C]: arg-max accuracy (integer outputs:
    exact match with targets of their shape).
  - `action_token_accuracy`: integer bin targets [N, D] and logits [N, D, bins]: the fraction of
    action tokens whose arg-max bin is the target bin. Continuous action targets in [-1, 1] (floats)
    are first put in the same uniform bins.
  - `within_tolerance`: float targets shaped like the output (regression, e.g. continuous actions):
    the fraction of samples whose error, in units of each target dimension's standard deviation,
    has an RMS over dimensions of at most `tolerance` (default 0.25). `mse` is reported beside it.
- Without targets (fidelity to the reference's outputs on the same inputs):
  - logits and action tokens: `top1_agreement` (arg-max over the last axis agrees, every position
    counted); also reported: `top5_agreement` (the reference's top class is among the candidate's top
    5; more than 5 classes) and `kl_divergence` (mean KL(softmax(reference) || softmax(candidate)) per
    position, in nats). Forced `kl_divergence` retains exp(-KL): the geometric mean, under the
    reference's distribution, of the candidate's probability over the reference's.
  - embeddings and feature vectors: `centered_cosine`, the mean over samples of the cosine between
    the candidate's and the reference's vectors after subtracting the reference's mean vector over the
    evaluation set from both. Plain cosine (`cosine_similarity`, always reported) is inflated by the
    direction every sample shares: unrelated inputs of a small random BERT have a plain cosine of
    0.94 with each other, and a copy with 95% of its weights pruned still scores 0.997, while its
    centered cosine is 0.95. Also reported: `nn_agreement`, the fraction of samples whose nearest
    neighbour (by cosine, among the first 2048 samples of the set) is the same for candidate and
    reference (at least 3 samples). Arg-max agreement is not computed for embeddings: it means nothing
    there. accuracy_retained = the centered cosine (negative counts as 0): no calibration is applied.
  - regression: `within_tolerance_of_reference` (the within-tolerance rule with the reference's
    outputs as targets: error per dimension relative to the reference's spread).
  - integer and boolean outputs (ids, decisions): `exact_agreement`, the fraction of equal elements.
`cosine_similarity` (mean over samples of the flattened outputs) and `relative_error`
(||candidate - reference|| / ||reference||) are reported for every output.
`accuracy_retained` = value / reference_value (the reference is evaluated on the same data; a
candidate can retain more than 1.0 when it beats the reference on the targets).

Outputs that cannot be compared (not tensors: None, strings, numbers; or tensors without a
per-sample first axis, like a scalar loss) raise InvalidModelError unless `output` names a
comparable output; then they are left out and the gating output's reason says so.

Data: the `data` argument, else the candidate's evaluation data, else the reference's, else
`num_samples` inputs synthesized from the input signature with a fixed seed. Batches of
`batch_size` keep memory bounded.

`output_specs(handle)` describes the outputs from one forward pass (what an upload can store) and
`check_metric(metric, specs, output=..., targets=...)` refuses, before any job runs, a metric or an
output name that does not fit them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.arguments import EvalMetric, check_arguments
from tools.errors import DataMismatchError, InvalidArgumentError, InvalidModelError, ToolError
from tools.handle import TRAINED_ON_EVAL_DATA, EvalData, ModelHandle
from tools.outputs import OUTPUT_KINDS, KindGuess, OutputKind, guess_kinds
from tools.runtime import check_inputs, output_values, slice_batch, synthesize_inputs

DEFAULT_TOLERANCE = 0.25
NN_MAX_SAMPLES = 2048
MetricName = EvalMetric
TARGET_METRICS = ("accuracy", "action_token_accuracy", "within_tolerance")
_KIND_METRIC: dict[str, str] = {
    "logits": "top1_agreement",
    "action_tokens": "top1_agreement",
    "embedding": "centered_cosine",
    "regression": "within_tolerance_of_reference",
    "labels": "exact_agreement",
}
DataSource = Literal[
    "given",
    "eval_data",
    "reference_eval_data",
    "eval_data_held_out",  # a model trained on the other half (distillation, quantization-aware training)
    "reference_eval_data_held_out",
    "synthesized",
]


class OutputResult(BaseModel):
    """One output's score."""

    name: str
    shape: list[int] = Field(description="The output's shape over the evaluation set (samples first).")
    dtype: str
    output_kind: OutputKind
    metric: MetricName
    metric_reason: str = Field(description="Why this metric: what the output was recognized as, and how.")
    value: float
    reference_value: float
    accuracy_retained: float
    uses_targets: bool
    top1_agreement: float | None = None
    top5_agreement: float | None = None
    kl_divergence: float | None = None
    cosine_similarity: float
    centered_cosine: float | None = None
    nn_agreement: float | None = None
    relative_error: float
    mse: float | None = None
    tolerance: float | None = None


class EvalResult(BaseModel):
    metric: MetricName = Field(description="Which metric `value` is (of the gating output).")
    metric_reason: str = Field(description="Why this metric, and which output gates.")
    value: float = Field(description="The candidate's metric.")
    reference_value: float = Field(description="The reference's metric on the same data.")
    accuracy_retained: float = Field(description="value / reference_value (of the gating output).")
    uses_targets: bool
    top1_agreement: float | None = Field(None, description="Arg-max agreement with the reference (logits).")
    top5_agreement: float | None = None
    kl_divergence: float | None = None
    cosine_similarity: float
    centered_cosine: float | None = None
    nn_agreement: float | None = None
    relative_error: float
    mse: float | None = Field(None, description="Mean squared error to the targets (regression).")
    tolerance: float | None = Field(None, description="Tolerance of the within-tolerance metrics (in stds).")
    output_kind: OutputKind
    output: str = Field(description="The gating output's name.")
    gating: Literal["only", "worst", "named"] = Field(
        description="only: the model has one scored output; worst: the lowest accuracy_retained of "
        "several; named: the output named by the `output` argument."
    )
    outputs: list[OutputResult] = Field(description="Every scored output, in the model's order.")
    num_samples: int
    data_source: DataSource


def evaluate(
    handle: ModelHandle,
    *,
    reference: ModelHandle,
    data: EvalData | None = None,
    output_kind: OutputKind | None = None,
    metric: MetricName | None = None,
    output: str | None = None,
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
        metric=metric,
        output=output,
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

    ref_out = _reference_outputs(reference, data, source, n, batch_size, seed)
    pairs, problems = _pair_outputs(_outputs(handle, data.inputs, n, batch_size), ref_out)
    names = ref_out.order
    scored = _scored_outputs(names, problems, output)
    ref_outputs = {k: pairs[k][1] for k in scored}
    guesses = guess_kinds(handle, ref_outputs, reference=reference)
    target_output = output if output is not None else scored[0]
    results = []
    for name in scored:
        cand, ref = pairs[name]
        if cand.shape != ref.shape:
            raise InvalidArgumentError(
                f"the candidate's output shape {list(cand.shape)} differs from the reference's "
                f"{list(ref.shape)}" + (f" (output '{name}')" if len(names) > 1 else "")
            )
        # A forced metric or kind applies to the named output, or to every output when none is named.
        applies = output is None or name == output
        forced, kind_given = (metric, output_kind) if applies else (None, None)
        t = np.asarray(targets) if targets is not None and name == target_output else None
        kind, why = output_kind_of(
            handle, reference, name, names.index(name), ref, t, kind_given, guesses[name]
        )
        results.append(_score(name, cand, ref, t, kind, why, forced, tolerance))

    if output is not None:
        gate, gating = next(r for r in results if r.name == output), "named"
    elif len(results) == 1:
        gate, gating = results[0], "only"
    else:
        gate, gating = min(results, key=lambda r: r.accuracy_retained), "worst"
    reason = gate.metric_reason
    if gating == "worst":
        reason = f"output '{gate.name}' gates (the worst of {len(results)} outputs): {reason}"
    elif gating == "named":
        reason = f"output '{gate.name}' gates (named): {reason}"
    skipped = [k for k in names if k in problems]
    if skipped:
        reason += f"; not compared: {_listing(skipped)}"
    return EvalResult(
        metric=gate.metric,
        metric_reason=reason,
        value=gate.value,
        reference_value=gate.reference_value,
        accuracy_retained=gate.accuracy_retained,
        uses_targets=gate.uses_targets,
        top1_agreement=gate.top1_agreement,
        top5_agreement=gate.top5_agreement,
        kl_divergence=gate.kl_divergence,
        cosine_similarity=gate.cosine_similarity,
        centered_cosine=gate.centered_cosine,
        nn_agreement=gate.nn_agreement,
        relative_error=gate.relative_error,
        mse=gate.mse,
        tolerance=gate.tolerance,
        output_kind=gate.output_kind,
        output=gate.name,
        gating=gating,  # type: ignore[arg-type]
        outputs=results,
        num_samples=n,
        data_source=source,
    )


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


def _pick_data(
    handle: ModelHandle, reference: ModelHandle, data: EvalData | None, num_samples: int, seed: int
) -> tuple[EvalData, Any]:
    if data is not None:
        return data, "given"
    for own, source in ((handle.eval_data, "eval_data"), (reference.eval_data, "reference_eval_data")):
        if own is None or not own.inputs:
            continue
        halves = own.halves() if handle.metadata.get(TRAINED_ON_EVAL_DATA) else None
        if halves is not None:
            # Trained on the other half (tools.distillation.split_for_training): measured on unseen samples.
            return halves[1], f"{source}_held_out"
        return own, source
    if not handle.inputs:
        raise InvalidArgumentError("the model has no input signature and no evaluation data to evaluate on")
    return EvalData(inputs=synthesize_inputs(handle.inputs, num_samples, seed=seed)), "synthesized"


class _Outputs:
    """A model's outputs over the evaluation set: arrays by name, why the others cannot be compared, and the
    order the model returns them in."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.problems: dict[str, str] = {}
        self.order: list[str] = []


def _outputs(handle: ModelHandle, inputs: dict[str, np.ndarray], n: int, batch_size: int) -> _Outputs:
    result = _Outputs()
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        for name, value in output_values(handle, slice_batch(inputs, start, stop)).items():
            if name not in result.order:
                result.order.append(name)
            problem = _compare_problem(value, stop - start)
            if problem is not None:
                result.problems.setdefault(name, problem)
            else:
                chunks.setdefault(name, []).append(value)
    for name, parts in chunks.items():
        if name in result.problems:
            continue
        arr = np.concatenate(parts, axis=0)
        if np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
            if not np.isfinite(arr).all():
                # A broken candidate (overflow in fp16, say) scores as it is; NaNs must not poison sums.
                arr = np.nan_to_num(arr, nan=0.0, posinf=3e38, neginf=-3e38)
        result.arrays[name] = arr
    return result


def _compare_problem(value: Any, batch: int) -> str | None:
    if not isinstance(value, np.ndarray):
        return f"a {type(value).__name__}, not a tensor"
    if value.dtype.kind not in "fiub":
        return f"a tensor of dtype {value.dtype}, which has no comparison metric"
    if value.ndim == 0 or value.shape[0] != batch:
        return f"a tensor of shape {list(value.shape)} without a per-sample first axis (batch {batch})"
    return None


def _reference_outputs(
    reference: ModelHandle, data: EvalData, source: str, n: int, batch_size: int, seed: int
) -> _Outputs:
    """The reference's outputs, cached on its handle: an agent evaluates many candidates against it."""
    if source == "synthesized":
        key: tuple[Any, ...] = ("synthesized", seed, n, tuple(s.model_dump_json() for s in reference.inputs))
        inputs_obj: Any = None
    else:
        key, inputs_obj = ("data", id(data.inputs), n), data.inputs
    hits = reference.cache.setdefault("evaluate_reference_outputs", [])
    # The inputs object itself is kept and compared, so a recycled id() cannot alias other data.
    for hit in hits:
        if hit[0] == key and hit[1] is inputs_obj:
            return hit[2]
    out = _outputs(reference, data.inputs, n, batch_size)
    # Two entries: the whole evaluation set and the half trained candidates are measured on.
    hits[:] = [*hits[-1:], (key, inputs_obj, out)]
    return out


def _pair_outputs(
    cand: _Outputs, ref: _Outputs
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """({reference output name: (candidate, reference)}, {name: why it cannot be compared}), in the
    reference's order. Outputs pair by name; when the names differ (an ONNX export renames them) but the
    counts agree, by position."""
    if sorted(ref.order) == sorted(cand.order):
        mapping = {k: k for k in ref.order}
    elif len(ref.order) == len(cand.order):
        mapping = dict(zip(ref.order, cand.order, strict=True))
    else:
        raise InvalidArgumentError(
            f"the candidate has {len(cand.order)} outputs ({_listing(cand.order)}), the reference "
            f"{len(ref.order)} ({_listing(ref.order)}); compare like with like"
        )
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    problems: dict[str, str] = {}
    for r, c in mapping.items():
        if r in ref.problems:
            problems[r] = ref.problems[r]
        elif c in cand.problems:
            problems[r] = f"the candidate's output is {cand.problems[c]}"
        else:
            pairs[r] = (cand.arrays[c], ref.arrays[r])
    return pairs, problems


def _scored_outputs(names: list[str], problems: dict[str, str], output: str | None) -> list[str]:
    """The outputs to score (all comparable ones), refusing what cannot be compared but would have to be."""
    comparable = [k for k in names if k not in problems]
    if output is not None:
        if output not in names:
            raise InvalidArgumentError(
                f"the model has no output '{output}'; its outputs are {_listing(names)}"
            )
        if output in problems:
            raise InvalidModelError(
                f"output '{output}' cannot be compared: it is {problems[output]}; "
                f"name another output (comparable: {_listing(comparable)})"
            )
        return comparable
    if problems:
        raise InvalidModelError(
            "the model has outputs that cannot be compared: "
            + "; ".join(f"'{k}' is {v}" for k, v in problems.items())
            + (
                f". Name the output to score with `output` (comparable: {_listing(comparable)})"
                if comparable
                else ". Make forward() return tensors with the samples on their first axis"
            )
        )
    if not comparable:
        raise InvalidModelError("the model returned no outputs to compare")
    return comparable


def _listing(names: list[str]) -> str:
    return ", ".join(f"'{k}'" for k in names) if names else "none"


# --------------------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------------------


def output_kind_of(
    handle: ModelHandle,
    reference: ModelHandle,
    name: str,
    position: int,
    out: np.ndarray,
    targets: np.ndarray | None,
    forced: str | None,
    guess: KindGuess,
) -> tuple[OutputKind, str]:
    """What output `name` (at `position`) is, and why: the rules of the module docstring, first match wins
    (also used by tools.distillation to fit its loss to each output)."""
    if forced is not None:
        return forced, f"output_kind '{forced}' given"  # type: ignore[return-value]
    for h in (handle, reference):
        meta = h.metadata.get("output_kind")
        if isinstance(meta, dict) and meta.get(name) in OUTPUT_KINDS:
            return meta[name], f"the model's metadata names output '{name}' '{meta[name]}'"
        if isinstance(meta, str) and meta in OUTPUT_KINDS and position == 0:
            return meta, f"the model's metadata says '{meta}'"  # type: ignore[return-value]
    if position == 0:
        for h in (handle, reference):
            if h.architecture is not None:
                from tools.architectures import output_kind

                try:
                    kind = output_kind(h.architecture)
                except Exception:  # noqa: BLE001 - an unregistered name: fall back to the evidence below
                    continue
                return kind, f"registered architecture '{h.architecture.name}' outputs {kind}"
    if targets is not None:
        if _integral(targets) and targets.ndim == out.ndim - 1:
            kind = "action_tokens" if out.ndim >= 3 else "logits"
            return kind, f"integer targets {list(targets.shape)} index the last axis of the output: {kind}"
        if not np.issubdtype(out.dtype, np.floating) and targets.shape == out.shape:
            return "labels", "integer outputs with targets of their shape: labels"
        return "regression", f"targets {list(targets.shape)} shaped like the output: a regression"
    return guess.kind, guess.reason


def _integral(t: np.ndarray) -> bool:
    if np.issubdtype(t.dtype, np.integer) or t.dtype == np.bool_:
        return True
    return bool(np.issubdtype(t.dtype, np.floating) and t.size and np.all(np.mod(t, 1) == 0))


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------


def _score(
    name: str,
    cand: np.ndarray,
    ref: np.ndarray,
    targets: np.ndarray | None,
    kind: OutputKind,
    why: str,
    forced: str | None,
    tolerance: float,
) -> OutputResult:
    problem = _fit_problem(forced, list(ref.shape), str(ref.dtype), _target_info(targets), ref.shape[0])
    if forced is not None and problem is not None:
        raise InvalidArgumentError(f"metric '{forced}' does not fit output '{name}': {problem}")
    if forced is not None:
        metric = forced
        reason = f"metric '{forced}' named by the request (the output looks like: {why})"
    elif targets is not None:
        metric = _targets_metric(kind, ref, targets)
        reason = f"{why}; scored against the targets by {metric}"
    else:
        metric = _KIND_METRIC[kind]
        reason = f"{why}; scored by {metric}"
        misfit = _fit_problem(metric, list(ref.shape), str(ref.dtype), None, ref.shape[0])
        if misfit is not None:  # a kind stated by an argument or metadata that the output contradicts
            raise InvalidArgumentError(
                f"output '{name}' is taken for {kind} ({why}), but {misfit}; name a metric or output_kind "
                "that fits it"
            )
    floating = np.issubdtype(ref.dtype, np.floating)
    c = cand.astype(np.float32) if not floating else cand
    r = ref.astype(np.float32) if not floating else ref
    out: dict[str, Any] = {
        "cosine_similarity": _cosine(c, r),
        "relative_error": float(np.linalg.norm(c - r) / max(float(np.linalg.norm(r)), 1e-12)),
    }
    classes = floating and ref.ndim >= 2 and ref.shape[-1] >= 2
    if classes and (kind in ("logits", "action_tokens") or metric in _LOGIT_METRICS):
        out["top1_agreement"] = float(np.mean(cand.argmax(-1) == ref.argmax(-1)))
        if ref.shape[-1] > 5:
            out["top5_agreement"] = _top5(cand, ref)
        out["kl_divergence"] = _kl(cand, ref)
    if floating and (kind == "embedding" or metric in _EMBEDDING_METRICS):
        out["centered_cosine"] = _centered_cosine(cand, ref)
        if ref.shape[0] >= 3:
            out["nn_agreement"] = _nn_agreement(cand, ref)
    if forced is None and metric == "top1_agreement" and "top1_agreement" in out:
        share = _dominant_class_share(ref)
        if share >= DEGENERATE_CLASS_SHARE:
            # Agreement with a reference that answers one class whatever the input cannot see damage.
            metric = "centered_cosine"
            out["centered_cosine"] = _centered_cosine(cand, ref)
            reason += (
                f"; but the reference predicts one class for {share:.0%} of the inputs, where top-1 "
                "agreement cannot see damage, so the logits are scored by centered_cosine"
            )
    value, ref_value, retained = _metric_value(metric, cand, ref, targets, tolerance, out)
    return OutputResult(
        name=name,
        shape=[int(d) for d in ref.shape],
        dtype=str(ref.dtype),
        output_kind=kind,
        metric=metric,  # type: ignore[arg-type]
        metric_reason=reason,
        value=value,
        reference_value=ref_value,
        accuracy_retained=retained,
        uses_targets=metric in TARGET_METRICS,
        **out,
    )


# Reference arg-max classes this concentrated make top-1 agreement uninformative (random-weight or
# collapsed classifiers): the logits are then compared as vectors.
DEGENERATE_CLASS_SHARE = 0.9


def _dominant_class_share(ref: np.ndarray) -> float:
    classes = ref.argmax(-1).reshape(-1)
    if classes.size < 20:
        return 0.0
    return float(np.bincount(classes).max() / classes.size)


_LOGIT_METRICS = ("top1_agreement", "top5_agreement", "kl_divergence", "accuracy", "action_token_accuracy")
_EMBEDDING_METRICS = ("centered_cosine", "cosine_similarity", "nn_agreement")


def _metric_value(
    metric: str,
    cand: np.ndarray,
    ref: np.ndarray,
    targets: np.ndarray | None,
    tolerance: float,
    out: dict[str, Any],
) -> tuple[float, float, float]:
    """(value, reference_value, accuracy_retained); fills `mse` / `tolerance` into `out` where they apply."""
    if metric in TARGET_METRICS:
        assert targets is not None
        value, ref_value, mse = _task_metric(metric, cand, ref, targets, tolerance)
        if metric == "within_tolerance":
            out["mse"], out["tolerance"] = mse, tolerance
        return value, ref_value, _ratio(value, ref_value)
    if metric == "within_tolerance_of_reference":
        out["tolerance"] = tolerance
        value = _within_tolerance(cand, ref, _std(ref), tolerance)
        return value, 1.0, value
    if metric == "kl_divergence":
        kl = out["kl_divergence"]
        return kl, 0.0, math.exp(-kl)
    if metric in ("centered_cosine", "cosine_similarity", "nn_agreement"):
        value = out[metric]
        return value, 1.0, max(value, 0.0)
    if metric == "exact_agreement":
        value = float(np.mean(cand == ref))
        return value, 1.0, value
    value = out[metric]  # top1_agreement, top5_agreement
    return value, 1.0, value


def _targets_metric(kind: OutputKind, out: np.ndarray, targets: np.ndarray) -> str:
    if kind in ("logits", "action_tokens") and targets.ndim == out.ndim - 1:
        if _integral(targets) or (kind == "action_tokens" and np.issubdtype(targets.dtype, np.floating)):
            return "action_token_accuracy" if out.ndim >= 3 else "accuracy"
    if kind == "labels" and targets.shape == out.shape:
        return "accuracy"
    if kind in ("logits", "action_tokens") and _integral(targets) and targets.ndim != out.ndim - 1:
        raise DataMismatchError(f"targets of shape {list(targets.shape)} for outputs {list(out.shape)}")
    return "within_tolerance"


def _task_metric(
    metric: str, cand: np.ndarray, ref: np.ndarray, targets: np.ndarray, tolerance: float
) -> tuple[float, float, float | None]:
    if metric == "accuracy" and not np.issubdtype(cand.dtype, np.floating):
        if targets.shape != cand.shape:
            raise DataMismatchError(f"targets of shape {list(targets.shape)} for outputs {list(cand.shape)}")
        return float(np.mean(cand == targets)), float(np.mean(ref == targets)), None
    if metric in ("accuracy", "action_token_accuracy"):
        if (
            metric == "action_token_accuracy"
            and np.issubdtype(targets.dtype, np.floating)
            and (not _integral(targets) or float(targets.min(initial=0.0)) < 0.0)
        ):
            # Continuous actions in [-1, 1]: score them in the model's own bins (OpenVLA's tokenizer).
            import torch

            from tools.architectures import actions_to_bins

            targets = actions_to_bins(torch.from_numpy(targets.astype(np.float32)), cand.shape[-1]).numpy()
        labels = targets.astype(np.int64)
        if labels.shape != cand.shape[:-1]:
            raise DataMismatchError(f"targets of shape {list(labels.shape)} for outputs {list(cand.shape)}")
        return float(np.mean(cand.argmax(-1) == labels)), float(np.mean(ref.argmax(-1) == labels)), None
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
    return value, ref_value, float(np.mean((cand - t) ** 2))


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


def _rows_cosine(a2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    num = np.sum(a2 * b2, axis=1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    both_zero = den == 0
    return np.where(
        both_zero, np.where(np.all(a2 == b2, axis=1), 1.0, 0.0), num / np.where(both_zero, 1, den)
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64)
    return float(np.mean(_rows_cosine(a2, b2)))


def _centered_cosine(cand: np.ndarray, ref: np.ndarray) -> float:
    """Cosine after removing the reference's mean over the set (one sample: plain cosine)."""
    a2 = cand.reshape(cand.shape[0], -1).astype(np.float64)
    b2 = ref.reshape(ref.shape[0], -1).astype(np.float64)
    if b2.shape[0] >= 2:
        mean = b2.mean(axis=0, keepdims=True)
        a2, b2 = a2 - mean, b2 - mean
    return float(np.mean(_rows_cosine(a2, b2)))


def _nearest(x: np.ndarray) -> np.ndarray:
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1)


def _nn_agreement(cand: np.ndarray, ref: np.ndarray) -> float:
    m = min(cand.shape[0], NN_MAX_SAMPLES)
    return float(np.mean(_nearest(cand[:m]) == _nearest(ref[:m])))


def _log_probs(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    if np.all(x >= 0) and np.allclose(x.sum(axis=-1), 1.0, atol=1e-4):  # already probabilities
        return np.log(np.clip(x, 1e-12, None))
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _kl(cand: np.ndarray, ref: np.ndarray) -> float:
    lp, lq = _log_probs(ref), _log_probs(cand)
    return float(max(0.0, np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1))))


def _top5(cand: np.ndarray, ref: np.ndarray) -> float:
    top = np.argpartition(-cand, 5, axis=-1)[..., :5]
    return float(np.mean(np.any(top == ref.argmax(-1)[..., None], axis=-1)))


def _ratio(value: float, reference_value: float) -> float:
    if reference_value > 0:
        return value / reference_value
    # A reference that scores 0 leaves nothing to retain: equal or better counts as all of it.
    return 1.0 if value >= reference_value else 0.0


# --------------------------------------------------------------------------------------------------
# Request-time checks
# --------------------------------------------------------------------------------------------------


def _target_info(targets: np.ndarray | None) -> dict[str, Any] | None:
    if targets is None:
        return None
    return {"shape": list(targets.shape), "dtype": str(targets.dtype)}


def _fit_problem(
    metric: str | None,
    shape: list[int | None] | None,
    dtype: str,
    targets: dict[str, Any] | None,
    num_samples: int | None = None,
) -> str | None:
    """Why `metric` cannot score an output of this shape and dtype (None: it fits)."""
    if metric is None:
        return None
    if shape is None or len(shape) == 0:
        return "the output has no per-sample axis"
    floating = dtype.startswith(("float", "bfloat"))
    integer = dtype.startswith(("int", "uint", "bool"))
    desc = f"a {_dims(shape)} {dtype} output"
    features = math.prod(int(d) for d in shape[1:] if d is not None) if len(shape) > 1 else 1
    last = shape[-1] if len(shape) > 1 else None
    if metric in TARGET_METRICS:
        if targets is None:
            return f"'{metric}' compares with targets, and the evaluation data has none (attach some)"
        t_shape = list(targets.get("shape") or [])
        if metric == "accuracy":
            if integer and len(t_shape) == len(shape):
                return None
            if not floating or len(shape) != 2 or (last is not None and last < 2):
                return f"'accuracy' needs class logits [batch, classes] (or integer labels); this is {desc}"
            if len(t_shape) != 1:
                return f"'accuracy' needs one class index per sample; the targets are {t_shape}"
            return None
        if metric == "action_token_accuracy":
            if not floating or len(shape) != 3:
                return f"'action_token_accuracy' needs logits [batch, tokens, bins]; this is {desc}"
            if len(t_shape) != 2:
                return f"'action_token_accuracy' needs targets [batch, tokens]; the targets are {t_shape}"
            return None
        if not floating:
            return f"'within_tolerance' needs a floating output; this is {desc}"
        t_features = math.prod(int(d) for d in t_shape[1:]) if len(t_shape) > 1 else 1
        if None in shape[1:] or t_features == features:
            return None
        return f"'within_tolerance' needs targets shaped like the output: targets {t_shape}, {desc}"
    if metric == "exact_agreement":
        return None if integer else f"'exact_agreement' compares integer or boolean outputs; this is {desc}"
    if not floating:
        return f"'{metric}' needs a floating output; this is {desc} (use 'exact_agreement')"
    if metric in ("top1_agreement", "kl_divergence"):
        if len(shape) < 2 or (last is not None and last < 2):
            return f"'{metric}' needs scores over classes on the last axis (at least 2); this is {desc}"
        return None
    if metric == "top5_agreement":
        if len(shape) < 2 or (last is not None and last <= 5):
            return f"'top5_agreement' needs more than 5 classes on the last axis; this is {desc}"
        return None
    if metric in _EMBEDDING_METRICS:
        if len(shape) < 2 or features < 2:
            return f"'{metric}' compares vectors (at least 2 values per sample); this is {desc}"
        if metric == "nn_agreement" and num_samples is not None and num_samples < 3:
            return f"'nn_agreement' needs at least 3 samples, the evaluation set has {num_samples}"
        return None
    return None  # within_tolerance_of_reference: any floating output


def _dims(shape: list[int | None]) -> str:
    return "[" + ", ".join(["batch", *("?" if d is None else str(d) for d in shape[1:])]) + "]"


def output_specs(handle: ModelHandle, *, batch_size: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """The model's outputs from one forward pass on `batch_size` samples (of its evaluation data, else
    synthesized from its input signature): JSON-ready, for an upload to store and `check_metric` to read.

    Each: `name`, `shape` (axis 0 the batch, None; other axes as measured, None where an ONNX graph
    names them symbolic), `dtype`, `comparable` (a tensor with a per-sample first axis), `problem`
    (why not, else None), `kind` and `kind_reason` (what `evaluate` would take it for without targets)
    and `ambiguous`. Raises InvalidArgumentError when the model has no input signature,
    DataMismatchError when the model does not run on those inputs. Shapes are measured at the
    synthesized sequence length (16) where the signature has dynamic non-batch axes.
    """
    if not handle.inputs:
        raise InvalidArgumentError(
            "the model has no input signature: its outputs cannot be measured (give its inputs or "
            "evaluation data when loading it)"
        )
    if handle.eval_data is not None and handle.eval_data.inputs:
        inputs = slice_batch(handle.eval_data.inputs, 0, batch_size)
    else:
        inputs = synthesize_inputs(handle.inputs, batch_size, seed=seed)
    batch = int(next(iter(inputs.values())).shape[0])
    try:
        values = output_values(handle, inputs)
    except ToolError:
        raise
    except Exception as exc:  # noqa: BLE001 - the model refuses inputs of its own signature
        raise DataMismatchError(
            f"the model does not run on inputs of its signature {[s.model_dump() for s in handle.inputs]}",
            details=str(exc)[:500],
        ) from exc
    symbolic = _onnx_symbolic_axes(handle)
    arrays = {k: v for k, v in values.items() if _compare_problem(v, batch) is None}
    guesses = guess_kinds(handle, arrays)
    specs = []
    for name, value in values.items():
        problem = _compare_problem(value, batch)
        if not isinstance(value, np.ndarray):
            specs.append(
                {"name": name, "shape": None, "dtype": type(value).__name__, "comparable": False,
                 "problem": problem, "kind": None, "kind_reason": None, "ambiguous": False}
            )  # fmt: skip
            continue
        shape: list[int | None] = [int(d) for d in value.shape]
        if problem is None:
            shape[0] = None
        for axis in symbolic.get(name, ()):
            if 0 < axis < len(shape):
                shape[axis] = None
        kind, reason, ambiguous = None, None, False
        if name in guesses:
            guess = guesses[name]
            kind, reason = output_kind_of(
                handle, handle, name, list(values).index(name), value, None, None, guess
            )
            ambiguous = guess.ambiguous and reason == guess.reason
        specs.append(
            {
                "name": name,
                "shape": shape,
                "dtype": str(value.dtype),
                "comparable": problem is None,
                "problem": problem,
                "kind": kind,
                "kind_reason": reason,
                "ambiguous": ambiguous,
            }
        )
    return specs


def _onnx_symbolic_axes(handle: ModelHandle) -> dict[str, list[int]]:
    if handle.runtime != "onnx":
        return {}
    axes: dict[str, list[int]] = {}
    for out in handle.model.graph.output:
        dims = out.type.tensor_type.shape.dim
        axes[out.name] = [i for i, d in enumerate(dims) if not d.HasField("dim_value")]
    return axes


def check_metric(
    metric: str | None,
    outputs_info: list[dict[str, Any]],
    *,
    output: str | None = None,
    targets: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Refuse, before a job runs, a metric or output that `evaluate` would refuse on these outputs.

    `outputs_info`: `output_specs(handle)` (name, shape, dtype, comparable, problem, kind), as stored at
    upload; `targets`: the evaluation data's targets as {"shape", "dtype"} (None: no targets).
    Returns the metric each scored output will use (the forced one, or the kind's default: every
    comparable output when `output` is None, else just that one). Raises InvalidArgumentError (unknown
    metric or output name, a metric that does not fit, e.g. 'top1_agreement' on an integer output or
    'accuracy' without targets) or InvalidModelError (outputs that cannot be compared and no `output`
    naming a comparable one), each with what to change.
    """
    check_arguments("evaluate", metric=metric, output=output)
    names = [str(o.get("name")) for o in outputs_info]
    by_name = {str(o.get("name")): o for o in outputs_info}
    comparable = [k for k in names if by_name[k].get("comparable", True)]
    if output is not None:
        if output not in by_name:
            raise InvalidArgumentError(
                f"the model has no output '{output}'; its outputs are {_listing(names)}"
            )
        if not by_name[output].get("comparable", True):
            raise InvalidModelError(
                f"output '{output}' cannot be compared: {by_name[output].get('problem')}; "
                f"name another output (comparable: {_listing(comparable)})"
            )
        scored = [output]
    else:
        bad = [k for k in names if k not in comparable]
        if bad:
            raise InvalidModelError(
                "the model has outputs that cannot be compared: "
                + "; ".join(f"'{k}': {by_name[k].get('problem')}" for k in bad)
                + (
                    f". Name the output to score with `output` (comparable: {_listing(comparable)})"
                    if comparable
                    else ". Make forward() return tensors with the samples on their first axis"
                )
            )
        scored = comparable
    if not scored:
        raise InvalidModelError("the model has no outputs to compare")
    first = comparable[0] if comparable else None
    chosen: dict[str, str] = {}
    for name in scored:
        info = by_name[name]
        t = targets if name == (output or first) else None
        problem = _fit_problem(metric, info.get("shape"), str(info.get("dtype", "")), t)
        if problem is not None:
            raise InvalidArgumentError(
                f"metric '{metric}' does not fit output '{name}': {problem}",
                details=f"output '{name}' looks like {info.get('kind')}: {info.get('kind_reason')}",
            )
        chosen[name] = metric or _expected_metric(info, t)
    return chosen


def _expected_metric(info: dict[str, Any], targets: dict[str, Any] | None) -> str:
    """The metric `evaluate` picks for an output described by `output_specs` (targets: their shape)."""
    kind = str(info.get("kind"))
    if targets is None:
        return _KIND_METRIC.get(kind, "top1_agreement")
    ndim, t_ndim = len(info.get("shape") or []), len(targets.get("shape") or [])
    integral = str(targets.get("dtype", "")).startswith(("int", "uint", "bool"))
    floating = str(info.get("dtype", "")).startswith(("float", "bfloat"))
    if floating and t_ndim == ndim - 1 and (integral or kind == "action_tokens"):
        return "action_token_accuracy" if ndim >= 3 else "accuracy"
    if not floating and t_ndim == ndim:
        return "accuracy"
    return "within_tolerance"
