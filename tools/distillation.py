"""`distill`: give a compressed candidate back the accuracy it lost by training it to match its teacher.

    recovered = distill(pruned, original, steps=300, time_budget_s=30)

Knowledge distillation as the model-optimization libraries do it after pruning (NVIDIA ModelOpt, NNCF):
the candidate (pruned, or with its remaining float layers after quantization) is the student, the
original model the teacher, and the student is trained to reproduce the teacher's outputs.

- Data: the `data` argument, else the candidate's evaluation data, else the teacher's, else inputs
  synthesized from the signature (`tools.runtime.synthesize_inputs`). Only inputs are used: the targets
  are the teacher's outputs, so nothing of the evaluation targets leaks into training. With
  `augment`, half of every batch are augmented copies (Gaussian noise scaled per feature on float
  inputs, up to one pixel of shift on images, a tenth of the ids resampled within their range), which
  the teacher labels as they are drawn: a policy also meets states its evaluation data lacks. With
  synthesized inputs, every step draws fresh ones (the teacher labels anything), and the synthesized set
  is only held out. The candidate's own evaluation data (64 samples or more) is halved
  (`split_for_training`): training sees the even samples, and the result is measured, here and by the
  gate (`tools.evaluation`), on the odd ones it never saw.
  A fifth of the samples (at most 512) is held out; the weights kept are those of the checkpoint (every
  25 steps, and the start) with the lowest held-out loss, so the result is never worse on it than the
  candidate that came in.
- Loss per output kind (`tools.evaluation.output_kind_of`, as `evaluate` reads it): logits and action
  tokens get the KL divergence of the temperature-softened distributions (times T^2); regressions the
  mean squared error divided by the teacher's variance per element; embeddings 1 - cosine after
  removing the teacher's mean (the centered cosine `evaluate` scores them with). Integer outputs are
  not differentiable and are left out. `loss` forces one of them for every float output.
- Budget: at most `steps` steps and `time_budget_s` seconds (checked before each step). The learning
  rate warms up over 20 steps and halves every 200 whatever the budget, so a run cut by time is the same
  run as one asked for that many steps: the step's `result["replay"]` gives the arguments that rebuild
  it exactly.
- Deterministic under `seed` (batches, augmentation), on the CPU or a CUDA device.
- Formats: eager modules (state dicts of registered architectures), `.pt2` graphs (their module) and
  TorchScript (converted to a module tree by `tools.graph_modules.module_tree`, as the other torch
  tools do). ONNX graphs cannot be trained: UnsupportedFormatError says why. The candidate is never
  modified: training runs on a copy.

The recipe step's `result` holds the training curve, the steps and seconds spent, the loss of each
output, and the accuracy retained against the teacher before and after (`evaluate` on the same data:
with targets, the task metric; so with the original as teacher, the gate's own number).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from tools.arguments import DistillArgs, check_arguments
from tools.errors import (
    DataMismatchError,
    InvalidArgumentError,
    UnsupportedDeviceError,
    UnsupportedFormatError,
)
from tools.handle import TRAINED_ON_EVAL_DATA, EvalData, InputSpec, ModelHandle, copy_model
from tools.runtime import (
    check_inputs,
    flatten_outputs,
    forward_all,
    model_dtype,
    slice_batch,
    synthesize_inputs,
    to_tensors,
)

LR_HALF_LIFE = 200  # steps
WARMUP_STEPS = 20
CHECK_EVERY = 25  # steps between held-out checkpoints
VAL_FRACTION = 0.2
MAX_VAL_SAMPLES = 512
MIN_SAMPLES_FOR_HOLDOUT = 10
ID_RESAMPLE = 0.1
MAX_CURVE_POINTS = 60
GRAD_CLIP = 1.0
LossName = Literal["kl", "mse", "cosine"]
_KIND_LOSS: dict[str, LossName] = {
    "logits": "kl",
    "action_tokens": "kl",
    "regression": "mse",
    "embedding": "cosine",
}


@dataclass
class TrainingReport:
    """What one distillation run did: its budget use, losses, and the held-out curve."""

    steps_run: int
    seconds: float
    stopped_by: Literal["steps", "time"]
    best_step: int
    losses: dict[str, str]
    loss_reasons: dict[str, str]
    train_samples: int
    val_samples: int
    val_loss_before: float
    val_loss_after: float
    curve: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "steps_run": self.steps_run,
            "seconds": round(self.seconds, 3),
            "stopped_by": self.stopped_by,
            "best_step": self.best_step,
            "losses": self.losses,
            "loss_reasons": self.loss_reasons,
            "train_samples": self.train_samples,
            "val_samples": self.val_samples,
            "val_loss_before": _round(self.val_loss_before),
            "val_loss_after": _round(self.val_loss_after),
            "curve": self.curve,
        }


def distill(
    candidate: ModelHandle,
    teacher: ModelHandle,
    *,
    data: EvalData | None = None,
    steps: int = 300,
    time_budget_s: float | None = 30.0,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    loss: str = "auto",
    temperature: float = 2.0,
    augment: bool = True,
    noise: float = 0.2,
    num_samples: int = 512,
    seed: int = 0,
    device: str | None = None,
) -> ModelHandle:
    """`candidate` trained to reproduce `teacher`'s outputs; a new handle, `candidate` is left untouched."""
    args = check_arguments(
        "distill",
        steps=steps,
        time_budget_s=time_budget_s,
        batch_size=batch_size,
        learning_rate=learning_rate,
        loss=loss,
        temperature=temperature,
        augment=augment,
        noise=noise,
        num_samples=num_samples,
        seed=seed,
    )
    assert isinstance(args, DistillArgs)
    check_pair(candidate, teacher)
    data, source = distillation_data(candidate, teacher, data, args.num_samples, args.seed)
    data, measured_on, held_out = split_for_training(data, source)
    student, how = trainable_copy(candidate)
    report = fit_to_teacher(
        student, candidate, teacher, data, args, device=device, synthesize=source == "synthesized"
    )
    step: dict[str, Any] = {"tool": "distill", **args.model_dump()}
    result: dict[str, Any] = {"data_source": source, "held_out_samples": held_out, **report.summary()}
    if how:
        result["module_tree"] = how
    # Rebuilding this version replays these arguments: the steps it ran, with no clock to cut them.
    result["replay"] = {"steps": report.steps_run, "time_budget_s": None}
    step["result"] = result
    out = candidate.with_step(student, step)
    if held_out:
        out.metadata[TRAINED_ON_EVAL_DATA] = True
    before = accuracy_against(candidate, teacher, measured_on)
    after = accuracy_against(out, teacher, measured_on)
    result.update(
        accuracy_retained_before=_round(before),
        accuracy_retained_after=_round(after),
        accuracy_gained=_round(after - before),
    )
    out.metadata["distillation"] = {k: result[k] for k in ("steps_run", "seconds", "curve", "losses")}
    return out


# --------------------------------------------------------------------------------------------------
# checks and data
# --------------------------------------------------------------------------------------------------


def check_pair(candidate: ModelHandle, teacher: ModelHandle) -> None:
    """Refuse what cannot be distilled: handles of the wrong kind, ONNX students, unlike signatures."""
    if not isinstance(candidate, ModelHandle) or not isinstance(teacher, ModelHandle):
        raise InvalidArgumentError("distill takes two model handles: the candidate and its teacher")
    if candidate.runtime != "torch":
        raise UnsupportedFormatError(
            f"distillation trains the candidate's weights with torch autograd, and this candidate is an "
            f"{candidate.format.upper()} graph: ONNX Runtime runs it but cannot train it. Distill the torch "
            "model before it goes to ONNX Runtime (prune, distill, then quantize), or upload the model as "
            "a state dict with its architecture, a .pt2 program or TorchScript",
        )
    if model_dtype(candidate) != torch.float32:
        raise InvalidArgumentError(
            f"distillation trains float32 weights and this candidate computes in {model_dtype(candidate)}; "
            "distill the float32 model, then cast it to half precision"
        )
    mine = sorted(s.name for s in candidate.inputs)
    theirs = sorted(s.name for s in teacher.inputs)
    if theirs and mine != theirs:
        raise DataMismatchError(
            f"the teacher's inputs {theirs} differ from the candidate's {mine}; distill a candidate from "
            "the model it was made from"
        )
    for spec in candidate.inputs:
        other = next((s for s in teacher.inputs if s.name == spec.name), None)
        if other is not None and len(other.shape) != len(spec.shape):
            raise DataMismatchError(
                f"input '{spec.name}' has {len(spec.shape)} dimensions in the candidate and "
                f"{len(other.shape)} in the teacher; distill a candidate from the model it was made from"
            )


def distillation_data(
    candidate: ModelHandle, teacher: ModelHandle, data: EvalData | None, num_samples: int, seed: int
) -> tuple[EvalData, str]:
    """(the inputs to distill on, where they come from); DataMismatchError when they hold no samples."""
    if data is not None:
        picked, source = data, "given"
    elif candidate.eval_data is not None and candidate.eval_data.inputs:
        picked, source = candidate.eval_data, "eval_data"
    elif teacher.eval_data is not None and teacher.eval_data.inputs:
        picked, source = teacher.eval_data, "teacher_eval_data"
    else:
        if not candidate.inputs:
            raise InvalidArgumentError("the candidate has no input signature and no data to distill on")
        picked = EvalData(inputs=synthesize_inputs(candidate.inputs, num_samples, seed=seed))
        source = "synthesized"
    if picked.num_samples == 0:
        raise DataMismatchError(
            "the distillation data holds no samples: give inputs with at least one sample on their first "
            "axis, or no data (inputs are then synthesized from the signature)"
        )
    check_inputs(candidate.inputs, picked.inputs)
    counts = {k: int(v.shape[0]) for k, v in picked.inputs.items()}
    if len(set(counts.values())) > 1:
        raise DataMismatchError(f"the data's inputs hold different numbers of samples: {counts}")
    return picked, source


def split_for_training(data: EvalData, source: str) -> tuple[EvalData, EvalData, int]:
    """(what to train on, what to measure the result on, samples held out). A model's own evaluation data
    is halved: the gate measures the trained model on the half it never saw (`tools.evaluation` picks
    that half for a handle marked `TRAINED_ON_EVAL_DATA`), so recovery cannot fit the test it is judged
    by. Given and synthesized data are used whole."""
    halves = data.halves() if source in ("eval_data", "teacher_eval_data") else None
    if halves is None:
        return data, data, 0
    fit, held = halves
    return fit, held, held.num_samples


def trainable_copy(handle: ModelHandle) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of the handle's model that autograd can train: eager and .pt2 modules are copied,
    TorchScript is converted to a module tree (tools.graph_modules), as the other torch tools do."""
    from tools.graph_modules import module_tree

    model = handle.model
    if isinstance(model, torch.jit.ScriptModule):
        tree, how = module_tree(handle)
        return tree, how
    if isinstance(model, nn.Module):
        return copy_model(model), {}
    raise UnsupportedFormatError(f"distillation needs a torch module, got {type(model).__name__}")


def accuracy_against(handle: ModelHandle, teacher: ModelHandle, data: EvalData) -> float:
    """accuracy_retained of `handle` against `teacher` on `data` (the gate's metric when data has targets)."""
    from tools.evaluation import evaluate

    return float(evaluate(handle, reference=teacher, data=data).accuracy_retained)


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


@dataclass
class _Output:
    name: str  # the teacher's name for it
    student_name: str
    loss: LossName
    reason: str
    scale: torch.Tensor | None = None  # mse: 1 / variance per element
    mean: torch.Tensor | None = None  # cosine: the teacher's mean


def fit_to_teacher(
    student: nn.Module,
    template: ModelHandle,
    teacher: ModelHandle,
    data: EvalData,
    args: DistillArgs,
    *,
    device: str | None = None,
    synthesize: bool = False,
) -> TrainingReport:
    """Train `student` (in place) to reproduce `teacher` on `data`, within the budget of `args`.

    `template` is the handle `student` was copied from (its input signature says how to feed it). The
    best held-out checkpoint is loaded back before returning; the student ends on the template's device.
    `synthesize` (the data was synthesized from the signature): training batches are drawn fresh from the
    signature at every step and `data` is the held-out set.
    """
    train_device = _device(device or template.device)
    home = template.device
    student.to(train_device)
    runner = template.clone(model=student, device=train_device)
    flags = _make_trainable(student)
    try:
        torch.manual_seed(args.seed)
        rng = np.random.default_rng(args.seed)
        n = data.num_samples
        order = rng.permutation(n)
        n_val = min(MAX_VAL_SAMPLES, int(n * VAL_FRACTION)) if n >= MIN_SAMPLES_FOR_HOLDOUT else 0
        if synthesize:
            n_val = n  # training draws its own inputs: all of `data` is held out
        val_idx = np.sort(order[:n_val]) if n_val else np.arange(n)
        train_idx = np.sort(order[n_val:]) if n_val and not synthesize else np.arange(n)
        inputs = data.inputs
        teacher_all = _teacher_outputs(teacher, inputs, n, args.batch_size)
        outputs = _plan_outputs(runner, teacher, data, teacher_all, args, train_device)
        stats = _input_stats(template.inputs, inputs)
        params = [p for p in student.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=args.learning_rate)
        gen = torch.Generator().manual_seed(args.seed)

        def batch_loss(
            idx: np.ndarray, *, augmented: np.ndarray | None, step: int | None = None
        ) -> torch.Tensor:
            if synthesize and step is not None:
                # No data of its own: every step draws fresh inputs, which the teacher labels (a fixed
                # synthesized set is memorized: its held-out loss rose while the training loss fell).
                batch = synthesize_inputs(template.inputs, len(idx), seed=args.seed * 1_000_003 + step + 1)
                fresh_out = forward_all(teacher, batch)
                targets = {o.name: fresh_out[_teacher_key(fresh_out, o.name)] for o in outputs}
                augmented = None
            else:
                batch = slice_indices(inputs, idx)
                targets = {o.name: teacher_all[o.name][idx] for o in outputs}
            if augmented is not None and augmented.any():
                rows = np.flatnonzero(augmented)
                changed = augment_inputs(slice_indices(batch, rows), template.inputs, stats, rng, args.noise)
                fresh = forward_all(teacher, changed)
                for name, arr in changed.items():
                    batch[name] = batch[name].copy()
                    batch[name][rows] = arr
                for o in outputs:
                    targets[o.name] = targets[o.name].copy()
                    targets[o.name][rows] = fresh[_teacher_key(fresh, o.name)]
            produced = dict(flatten_outputs(student(*to_tensors(runner, batch))))
            total = torch.zeros((), device=train_device)
            for o in outputs:
                want = torch.from_numpy(np.ascontiguousarray(targets[o.name])).to(train_device)
                total = total + _loss(o, produced[o.student_name].float(), want.float(), args.temperature)
            return total

        def val_loss() -> float:
            with torch.no_grad():
                parts = []
                for start in range(0, len(val_idx), args.batch_size):
                    idx = val_idx[start : start + args.batch_size]
                    parts.append(float(batch_loss(idx, augmented=None)) * len(idx))
            return sum(parts) / max(len(val_idx), 1)

        before = val_loss()
        best, best_step, best_state = before, 0, _state(student)
        curve: list[dict[str, float]] = [{"step": 0, "val_loss": _round(before)}]
        started = time.perf_counter()
        stopped_by: Literal["steps", "time"] = "steps"
        steps_run = 0
        train_sum = 0.0
        for step in range(args.steps):
            elapsed = time.perf_counter() - started
            per_step = elapsed / step if step else 0.0
            if args.time_budget_s is not None and step and elapsed + per_step > args.time_budget_s:
                stopped_by = "time"
                break
            pick = torch.randint(len(train_idx), (min(args.batch_size, len(train_idx)),), generator=gen)
            idx = train_idx[pick.numpy()]
            augmented = rng.random(len(idx)) < 0.5 if args.augment else None
            for group in optimizer.param_groups:
                # A short warm-up: Adam's first steps move every weight by about the learning rate, which
                # throws a wide student far from its teacher before the moments settle.
                warm = min(1.0, (step + 1) / WARMUP_STEPS)
                group["lr"] = args.learning_rate * warm * 0.5 ** (step / LR_HALF_LIFE)
            value = batch_loss(idx, augmented=augmented, step=step)
            if not value.requires_grad:
                raise InvalidArgumentError(
                    "none of the candidate's trainable weights affect its outputs (its layers are quantized "
                    "and pass no gradient): distill the float model before quantizing it, or quantize with "
                    "recovery='qat'"
                )
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
            steps_run = step + 1
            train_sum += float(value.detach())
            if steps_run % CHECK_EVERY == 0:
                current = val_loss()
                curve.append(
                    {
                        "step": steps_run,
                        "train_loss": _round(train_sum / CHECK_EVERY),
                        "val_loss": _round(current),
                    }
                )
                train_sum = 0.0
                if current < best:
                    best, best_step, best_state = current, steps_run, _state(student)
        if steps_run % CHECK_EVERY:
            current = val_loss()
            curve.append({"step": steps_run, "val_loss": _round(current)})
            if current < best:
                best, best_step, best_state = current, steps_run, _state(student)
        seconds = time.perf_counter() - started
        student.load_state_dict(best_state)
    finally:
        _restore_flags(student, flags)
        student.to(home)
    return TrainingReport(
        steps_run=steps_run,
        seconds=seconds,
        stopped_by=stopped_by,
        best_step=best_step,
        losses={o.name: o.loss for o in outputs},
        loss_reasons={o.name: o.reason for o in outputs},
        train_samples=len(train_idx),
        val_samples=len(val_idx),
        val_loss_before=before,
        val_loss_after=best,
        curve=_thin(curve),
    )


def _device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedDeviceError(f"distillation on '{device}' needs a CUDA GPU and this machine has none")
    return torch.device(device)


def _make_trainable(model: nn.Module) -> dict[str, bool]:
    """Train every plain float parameter (not quantized tensor subclasses); their old flags, by name."""
    flags: dict[str, bool] = {}
    trainable = 0
    for name, p in model.named_parameters():
        flags[name] = p.requires_grad
        plain = type(p) is nn.Parameter and p.is_floating_point()
        p.requires_grad_(plain)
        trainable += int(plain)
    if not trainable:
        _restore_flags(model, flags)
        raise InvalidArgumentError(
            "the candidate has no float weights to train (every layer is quantized): distill the float model "
            "before quantizing it, or quantize with recovery='qat'"
        )
    return flags


def _restore_flags(model: nn.Module, flags: dict[str, bool]) -> None:
    for name, p in model.named_parameters():
        if name in flags:
            p.requires_grad_(flags[name])


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _teacher_outputs(
    teacher: ModelHandle, inputs: dict[str, np.ndarray], n: int, batch_size: int
) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, max(batch_size, 256)):
        out = forward_all(teacher, slice_batch(inputs, start, min(n, start + max(batch_size, 256))))
        for name, arr in out.items():
            parts.setdefault(name, []).append(arr)
    return {name: np.concatenate(arrs) for name, arrs in parts.items()}


def _teacher_key(outputs: dict[str, np.ndarray], name: str) -> str:
    return name if name in outputs else list(outputs)[0]


def _plan_outputs(
    runner: ModelHandle,
    teacher: ModelHandle,
    data: EvalData,
    teacher_all: dict[str, np.ndarray],
    args: DistillArgs,
    device: torch.device,
) -> list[_Output]:
    """Pair the student's outputs with the teacher's (by name, else by position) and fit a loss to each."""
    from tools.evaluation import output_kind_of
    from tools.outputs import guess_kinds

    probe = slice_batch(data.inputs, 0, min(2, data.num_samples))
    with torch.no_grad():
        produced = dict(flatten_outputs(runner.model(*to_tensors(runner, probe))))
    mine, theirs = list(produced), list(teacher_all)
    if sorted(mine) == sorted(theirs):
        pairs = [(t, t) for t in theirs]
    elif len(mine) == len(theirs):
        pairs = list(zip(theirs, mine, strict=True))
    else:
        raise DataMismatchError(
            f"the teacher has {len(theirs)} outputs ({', '.join(theirs)}) and the candidate {len(mine)} "
            f"({', '.join(mine)}); distill a candidate from the model it was made from"
        )
    n = data.num_samples
    sample = {t: teacher_all[t][: min(n, 256)] for t, _ in pairs}
    guesses = guess_kinds(runner, sample, reference=teacher)
    planned: list[_Output] = []
    skipped: list[str] = []
    for position, (t, s) in enumerate(pairs):
        ref, got = teacher_all[t], produced[s]
        if not isinstance(got, torch.Tensor) or not isinstance(ref, np.ndarray):
            raise DataMismatchError(
                f"output '{s}' of the candidate is not a tensor; only tensors can be matched"
            )
        if list(got.shape[1:]) != list(ref.shape[1:]):
            mine_shape, their_shape = ", ".join(map(str, got.shape[1:])), ", ".join(map(str, ref.shape[1:]))
            raise DataMismatchError(
                f"the candidate's output '{s}' has shape [batch, {mine_shape}] and the teacher's '{t}' "
                f"[batch, {their_shape}]; distill a candidate from the model it was made from"
            )
        if not np.issubdtype(ref.dtype, np.floating) or not got.is_floating_point():
            skipped.append(t)
            continue
        targets = data.targets if position == 0 and data.targets is not None else None
        kind, why = output_kind_of(runner, teacher, t, position, sample[t], targets, None, guesses[t])
        chosen: LossName = _KIND_LOSS.get(kind, "mse") if args.loss == "auto" else args.loss  # type: ignore[assignment]
        reason = f"{why}: {chosen}" if args.loss == "auto" else f"loss '{chosen}' given"
        out = _Output(t, s, chosen, reason)
        values = torch.from_numpy(ref.astype(np.float32))
        if chosen == "mse":
            var = values.var(dim=0, unbiased=False)
            floor = max(float(var.mean()) * 1e-3, 1e-12)
            out.scale = (1.0 / var.clamp_min(floor)).to(device)
        elif chosen == "cosine":
            out.mean = values.mean(dim=0).to(device)
        planned.append(out)
    if not planned:
        raise InvalidArgumentError(
            f"no output to distill: {', '.join(skipped) or 'none'} are integer outputs (labels, ids), which "
            "carry no gradient"
        )
    return planned


def _loss(o: _Output, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    if o.loss == "kl":
        classes = student.shape[-1]
        s = torch.log_softmax(student.reshape(-1, classes) / temperature, dim=-1)
        t = torch.log_softmax(teacher.reshape(-1, classes) / temperature, dim=-1)
        kl = nn.functional.kl_div(s, t, log_target=True, reduction="batchmean")
        return kl * temperature**2
    if o.loss == "mse":
        scale = o.scale if o.scale is not None else 1.0
        return ((student - teacher) ** 2 * scale).mean()
    mean = o.mean if o.mean is not None else 0.0
    s = (student - mean).flatten(1)
    t = (teacher - mean).flatten(1)
    return (1.0 - nn.functional.cosine_similarity(s, t, dim=1, eps=1e-8)).mean()


# --------------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------------


@dataclass
class _InputStats:
    std: np.ndarray | None = None  # float inputs: per-element std over the data
    low: int = 0  # integer inputs: the range ids are resampled in
    high: int = 1


def _input_stats(specs: list[InputSpec], inputs: dict[str, np.ndarray]) -> dict[str, _InputStats]:
    stats: dict[str, _InputStats] = {}
    for spec in specs:
        arr = inputs[spec.name]
        if np.issubdtype(arr.dtype, np.floating):
            std = arr.astype(np.float64).std(axis=0)
            fallback = float(std.mean()) if float(std.mean()) > 0 else 1.0
            stats[spec.name] = _InputStats(std=np.where(std > 0, std, fallback).astype(np.float32))
        elif np.issubdtype(arr.dtype, np.integer):
            low = int(spec.low) if spec.low is not None else int(arr.min())
            high = int(spec.high) if spec.high is not None else int(arr.max()) + 1
            stats[spec.name] = _InputStats(low=low, high=max(high, low + 1))
        else:
            stats[spec.name] = _InputStats()
    return stats


def augment_inputs(
    batch: dict[str, np.ndarray],
    specs: list[InputSpec],
    stats: dict[str, _InputStats],
    rng: np.random.Generator,
    noise: float,
) -> dict[str, np.ndarray]:
    """Augmented copies of `batch`, fitted to each input's kind (see the module docstring)."""
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        arr, st = batch[spec.name], stats[spec.name]
        if st.std is not None:
            shifted = arr
            if arr.ndim >= 4:  # images [N, C, H, W]: up to one pixel of shift each way, per sample
                shifted = np.stack(
                    [np.roll(a, tuple(rng.integers(-1, 2, size=2)), axis=(-2, -1)) for a in arr]
                )
            jitter = rng.standard_normal(arr.shape).astype(np.float32) * (noise * st.std)
            out[spec.name] = (shifted + jitter).astype(arr.dtype)
        elif np.issubdtype(arr.dtype, np.integer):
            mask = rng.random(arr.shape) < ID_RESAMPLE
            drawn = rng.integers(st.low, st.high, size=arr.shape).astype(arr.dtype)
            out[spec.name] = np.where(mask, drawn, arr)
        else:
            out[spec.name] = arr
    return out


def slice_indices(inputs: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in inputs.items()}


def _thin(curve: list[dict[str, float]]) -> list[dict[str, float]]:
    if len(curve) <= MAX_CURVE_POINTS:
        return curve
    stride = math.ceil(len(curve) / MAX_CURVE_POINTS)
    return [p for i, p in enumerate(curve) if i % stride == 0 or i == len(curve) - 1]


def _round(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value


__all__ = ["TrainingReport", "distill", "fit_to_teacher", "trainable_copy", "check_pair", "distillation_data"]
