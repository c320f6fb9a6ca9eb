"""The offline planner: an expert strategy driven by the profile and by what earlier trials measured.

Order of play (each step is re-derived from the trial history, so a resumed session continues
where it stopped):

0. Recovery first: when the last candidate missed the accuracy floor and the session's time budget
   leaves room, the same calls again with recovery (`recover`): `distill` from the original right after
   structured pruning, quantization-aware training (`recovery="qat"`) for int8 / 4-bit quantization of a
   torch model. Each recovery gets at most a quarter of the time left, a quarter of the budget's share
   per trial and `RECOVERY_MAX_S` (5 s), its steps capped at `RECOVERY_STEPS`; the trial records what it
   cost and gained.
1. Quantize, cheapest high-yield method first for this model and device (dynamic int8 for a
   Linear-heavy model on a CPU; fp16/bf16 then int8/int4 weight-only on a GPU; 4-bit first when
   the user asked for it). ONNX models (and 4-bit for torch models on a CPU, through ONNX Runtime)
   are ordered by the size each method is expected to reach, computed from the profile's weight
   bytes per op: the methods that reach the size target come first, the least lossy of them first
   (per-channel int8 with the embedding tables, then static int8, then 4-bit blocks), then the rest
   by expected size; fp16 comes last on a CPU (it only halves the size and runs no faster), and a
   method that has nothing to shrink in this model (4-bit on a convolutional network) is never
   proposed. When a method (and its recovery) still costs too much accuracy, the per-layer fallback is
   mixed precision chosen by measured sensitivity (the tool keeps the layers that cost the most
   accuracy per byte at higher precision until the floor is met), on torch and ONNX Runtime alike, when
   the time budget allows it; no layer is kept in float by guess.
2. When the size target is still not reached: a lower-bit method on the float base; when it misses the
   floor (after recovery), the same method under the size target itself (`size_target`: per-layer
   precision from measured costs, a knapsack at the least cost that fits), then mixed precision under
   the accuracy target. Then, when pruning is allowed: bisection on the structured pruning amount
   against the accuracy floor with recovery in the loop (each candidate prunes the last floating-point
   version, distills it from the original, and re-applies the accepted quantization), starting at the
   amount the size target needs. When even the smallest amount fails, the most sensitive layer is
   excluded and the search restarts once.
3. Once the size goal is reached (or nothing above helps), spend what is left of the budget on
   latency: re-quantize the same lineage with a method of no more bits that runs faster here
   (static int8 on ONNX Runtime kernels on a CPU; int4/int8 weight-only kernels on a GPU); 4-bit
   everywhere past the target is tried under the size target (int8, folded to float at load, where
   4-bit costs the most); when the goal took sub-8-bit weights and an 8-bit method kept the floor,
   structured pruning (distilled) that takes the 8-bit method to the size target instead (faster on a
   CPU); then, for presets that value speed, a search on structured pruning (distilled) beyond the
   size target, where a step counts only if the gate accepted it (it must raise the objective, not
   just keep the floor).
4. Deploy runtime (`compile_model`, when the session allows `compilation` and the model has a decoder):
   on a GPU first for decoder-heavy models (lossless; the weight formats follow on top of it), elsewhere
   on the current version once the steps above are done.
5. Finish when nothing left is expected to help.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

from agents.criteria import Measurement, goal_reached, size_reduction_percent, speedup
from agents.planners.base import PlannerView, check_allowed, enforce_instructions
from agents.profile_facts import ProfileFacts, profile_facts
from agents.state import Action, ToolCall, TrialRecord

MIN_AMOUNT_STEP = 0.04
MIN_USEFUL_AMOUNT = 0.1  # below this, pruning saves too little to be worth a trial
RESTART_AMOUNT = 0.3
MAX_PRUNE_AMOUNT = 0.9
AMOUNT_EPS = 1e-4  # amounts are proposed rounded to 4 decimals
_BITS = {
    "dynamic_int8": 8,
    "static_int8": 8,
    "weight_only_int8": 8,
    "bnb_int8": 8,
    "weight_only_int4": 4,
    "bnb_nf4": 4,
    "fp16": 16,
    "bf16": 16,
    "fp8_weight_only": 8,
    "fp8_dynamic": 8,
}
_GPU_ONLY = {"weight_only_int4", "bnb_int8", "bnb_nf4", "fp8_weight_only", "fp8_dynamic"}
_CPU_ONLY = {"dynamic_int8", "static_int8"}
# ONNX Runtime methods and how much each may lose, least first (fp16 runs no faster on a CPU: last).
_ORT_METHODS = ("dynamic_int8", "static_int8", "weight_only_int4", "weight_only_int8", "fp16")
# On a CPU these run on ONNX Runtime for torch models too (the tool exports first): 4-bit has no torch CPU
# kernel, and int8 weight-only folded into float weights at load runs at ONNX Runtime's float speed (on
# the eval suite's reacher MLP 5x faster than torch eager, where torch's int8 weight-only ran slower).
_ORT_FOR_TORCH = ("weight_only_int4", "weight_only_int8")
_ORT_INT4_BITS = 4.0 + 32.0 / 32  # 4-bit values and one float32 scale per block of 32
USEFUL_RATIO = 0.97  # a method expected to leave more than this of the size has nothing to shrink here
REACH_SLACK = 0.005  # expected sizes this close to the target count as reaching it
ALTERNATIVE_SLACK = 0.1  # alternatives expected within this fraction of the float size of the current one
EVAL_SAMPLES = 256  # what the gate evaluates on (tools.evaluation's default sample count)
MIXED_MAX_GROUPS = 16  # tools.sensitivity.MAX_GROUPS
# Recovery (distillation, quantization-aware training) per candidate.
# Recovery is a candidate's extra cost, so it is kept to a few seconds: 200 steps of QAT train a small
# policy most of the way back in about a second, and a transformer gets what 5 s allow (vla-mini pruned
# by a quarter: 0.95 -> 0.99 of its action-token accuracy in 40 steps).
RECOVERY_STEPS = 200
# A small policy distilled after structured pruning needs more: on the reacher policy 25% pruned and
# then int8 kept 93% of the floor's metric after 200 steps and 99.9% after 600 (about 3 s on 2 cores).
SMALL_DISTILL_STEPS = 600
RECOVERY_MAX_S = 5.0
RECOVERY_MIN_S = 2.0  # less than this left: no recovery (it would not take)
RECOVERY_SHARE = 0.25  # of the time left in the session, per recovery
RECOVERY_MIN_SHARE = 0.25  # a distillation that closed less of its gap to the floor is not paid for again
# Below this many parameters (MLP policies, small CNNs) larger learning rates and batches train fast and
# stably; above (transformers such as vla-mini) they overshoot.
SMALL_MODEL_PARAMS = 500_000
QAT_METHODS = ("dynamic_int8", "weight_only_int8", "weight_only_int4")
GENTLE_PRUNE_AMOUNT = 0.2  # pruned at most this much, a student is distilled with the smaller step
QAT_MAX_GAP = 0.15  # below the floor by more than this, a quantization is not worth training for
MIXED_METHODS = ("dynamic_int8", "weight_only_int8", "weight_only_int4", "static_int8")
_LINEAR_KINDS = ("MatMul", "Gemm", "Linear")
_EMBEDDING_KINDS = ("Gather", "Embedding")
_CONV_KINDS = ("Conv", "Conv1d", "Conv2d", "Conv3d")


class RulesPlanner:
    name = "rules"

    async def next_action(self, view: PlannerView) -> Action:
        return decide(view)


def decide(view: PlannerView) -> Action:
    facts = profile_facts(view.profile)
    if view.instructions.finish_requested:
        return _finish("The user asked to stop; reporting the best version so far.")
    if goal_reached(view.criteria, view.baseline, view.current):
        action = (
            _fresh(_recovery_step(view, facts), view)
            or _fresh(_speed_step(view, facts), view)
            or _fresh(_compile_step(view, facts, last=True), view)
        )
        if action is not None:
            return action
        return _finish(
            f"The goal is reached: {size_reduction_percent(view.baseline, view.current):.1f}% smaller "
            f"(target {view.criteria.size_target_percent:.0f}%) with "
            f"{100 * view.current.accuracy_retained:.2f}% of the accuracy retained "
            f"(floor {100 * view.criteria.accuracy_floor:.1f}%), and no faster variant is left to try."
        )
    steps = (
        _recovery_step,
        _compile_step,  # on a GPU, first for decoder-heavy models (lossless)
        _quantization_step,
        _bit_escalation_step,
        _alternative_step,
        _pruning_step,
        _speed_step,
        lambda v, f: _compile_step(v, f, last=True),  # elsewhere, once compression is done
    )
    for step in steps:
        action = _fresh(step(view, facts), view)
        if action is not None:
            return action
    best = size_reduction_percent(view.baseline, view.current)
    return _finish(
        f"Nothing left that is expected to help: the current version is {best:.1f}% smaller than the original "  # noqa: E501
        f"with {100 * view.current.accuracy_retained:.2f}% accuracy retained; further steps either cost more "
        "accuracy than the floor allows or are not available for this model and device."
    )


# ------------------------------------------------------------------------------------------
# The deploy runtime (compile_model): static KV cache, compiled steps; lossless
# ------------------------------------------------------------------------------------------

DECODER_HEAVY_SHARE = 0.5  # of the Linear parameters in decoder layers: the decode is what costs


def _decoder_share(facts: ProfileFacts) -> float | None:
    """The share of Linear parameters in decoder layers (self-attention + MLP blocks feeding an lm_head), or
    None when the profile shows no decoder compile_model runs (the vla architecture, Llama-style LMs)."""
    names = list(facts.quantizable)
    if not any(n.endswith("self_attn.q_proj") for n in names) or not any("lm_head" in n for n in names):
        return None
    total = sum(facts.layer_params.get(n, 0) for n in names) or 1
    decoder = sum(
        facts.layer_params.get(n, 0) for n in names if ".self_attn." in n or ".mlp." in n or "lm_head" in n
    )
    return decoder / total


def _compile_step(view: PlannerView, facts: ProfileFacts, *, last: bool = False) -> Action | None:
    """compile_model when `compilation` is allowed and the model has a decoder: on a GPU first for
    decoder-heavy models (same tokens, the decode's per-step overhead gone: CUDA graphs), elsewhere
    (`last`) on the current version once the compression steps are done; once per lineage."""
    if "compilation" not in view.allowed_techniques() or view.runtime == "onnx":
        return None
    share = _decoder_share(facts)
    if share is None or any(c.tool == "compile_model" for c in view.current_record.recipe):
        return None
    gpu = view.device.startswith("cuda")
    if not last and not (gpu and share >= DECODER_HEAVY_SHARE):
        return None
    mode = "reduce-overhead" if gpu else "default"
    where = (
        "on a GPU each decode step replays as one CUDA graph" if gpu else "on a CPU inductor's C++ kernels"
    )
    return Action(
        kind="tool",
        calls=[ToolCall(tool="compile_model", arguments={"device": "cuda" if gpu else "cpu", "mode": mode})],
        reasoning=(
            f"Decoder layers hold {100 * share:.0f}% of the Linear weights: the deploy runtime (static KV "
            f"cache written at position tensors, vision + prefill and each decode step compiled; {where}) "
            "gives the same greedy tokens with less overhead per token; the gate keeps it only if faster."
        ),
        strategy="compile_runtime",
        meta={"mode": mode},
    )


# ------------------------------------------------------------------------------------------
# Quantization
# ------------------------------------------------------------------------------------------


def ranked_quant_methods(view: PlannerView, facts: ProfileFacts) -> list[tuple[str, str]]:
    """(method, why) in the order to try them for this model, device, preset and user preference."""
    allowed = view.allowed_techniques()
    offered = view.method_choices.get("quantize") or list(_BITS)
    gpu = view.device.startswith("cuda")
    preset = view.criteria.criteria_name
    order: list[tuple[str, str]] = []
    if view.runtime == "onnx":
        order = _ort_order(view, facts, _ORT_METHODS)
    elif gpu:
        half = "bf16" if preset != "accuracy_first" else "fp16"
        int4 = [
            ("weight_only_int4", "int4 weight-only quarters the weight bytes the GPU must stream per token"),
            ("bnb_nf4", "bitsandbytes nf4 is the 4-bit fallback"),
        ]
        int8 = [
            ("weight_only_int8", "int8 weight-only halves the weight bytes again over 16-bit"),
            ("fp8_weight_only", "float8 weights (Hopper/Ada kernels) halve the weight bytes over bf16"),
            ("bnb_int8", "bitsandbytes int8 is the 8-bit fallback"),
        ]
        halves = [(half, f"{half} halves size and memory traffic at almost no accuracy cost on a GPU")]
        if view.instructions.prefer_bits == 4 or preset == "max_compression":
            order = int4 + int8 + halves
        else:
            order = halves + int8 + int4
    else:
        linear_heavy = facts.linear_fraction >= 0.5
        conv_heavy = facts.conv_fraction >= 0.5
        dyn = (
            "dynamic_int8",
            f"Linear layers hold {100 * facts.linear_fraction:.0f}% of the parameters and the target is a CPU: "  # noqa: E501
            "dynamic int8 stores them 4x smaller and runs int8 GEMM kernels, with no calibration data needed",
        )
        static = (
            "static_int8",
            f"Conv layers hold {100 * facts.conv_fraction:.0f}% of the parameters: static int8 with calibration "  # noqa: E501
            "quantizes weights and activations",
        )
        wo8 = (
            "weight_only_int8",
            "int8 weight-only storage is the fallback when activation quantization hurts",
        )
        half = ("fp16", "fp16 halves the size (on a CPU it helps size, not speed)")
        if conv_heavy:
            order = [static, dyn, wo8, half]
        elif linear_heavy:
            order = [dyn, wo8, static, half]
        else:
            order = [dyn, static, wo8, half]
        # 4-bit on a CPU: MatMulNBits through ONNX Runtime (the tool exports the model first).
        int4 = _ort_order(view, facts, ("weight_only_int4",))
        if int4:
            int8_reaches = _reaches(view, expected_ratio(facts, "dynamic_int8"))
            if view.instructions.prefer_bits == 4 or preset == "max_compression" or not int8_reaches:
                order = int4 + order
            else:
                order = order + int4
        if view.instructions.prefer_bits == 16 or preset == "accuracy_first":
            order = [half] + [o for o in order if o[0] != "fp16"]
    out = []
    for method, why in order:
        if method not in offered:
            continue
        if gpu and method in _CPU_ONLY and view.runtime != "onnx":
            continue
        if not gpu and method in _GPU_ONLY and not (method == "weight_only_int4" and _ort_path(view, method)):
            continue
        if "quantization" not in allowed and not ("half_precision" in allowed and method in ("fp16", "bf16")):
            continue
        if view.instructions.prefer_bits == 8 and _BITS.get(method) == 16 and preset != "accuracy_first":
            continue
        out.append((method, why))
    return out


def expected_ratio(facts: ProfileFacts, method: str) -> float | None:
    """The size an ONNX Runtime method is expected to leave, as a fraction of the current size.

    From the profile's float weight bytes by the op that reads them: int8 stores MatMul/Gemm weights and
    embedding tables and convolutions in a quarter; 4-bit blocks in 5/32 (a float32 scale
    per 32 weights); fp16 halves every float tensor. None when the profile holds no byte counts.
    """
    total = facts.size_bytes or facts.float_bytes
    if total <= 0 or not facts.weight_bytes:
        if total <= 0 or not facts.linear_fraction:
            return None
        # Parameter fractions only (no byte counts): the Linear share shrinks.
        share = {"weight_only_int4": 1 - _ORT_INT4_BITS / 32, "fp16": 0.5}.get(method, 0.75)
        covered = 1.0 if method == "fp16" else facts.linear_fraction
        return 1.0 - share * covered
    linear = facts.bytes_of(*_LINEAR_KINDS)
    embedding = facts.bytes_of(*_EMBEDDING_KINDS)
    conv = facts.bytes_of(*_CONV_KINDS)
    saved = {
        "dynamic_int8": 0.75 * (linear + embedding + conv),
        "weight_only_int8": 0.75 * (linear + embedding + conv),
        "static_int8": 0.75 * (linear + embedding + conv),
        "weight_only_int4": (1 - _ORT_INT4_BITS / 32) * (linear + embedding),
        "fp16": 0.5 * facts.float_bytes,
    }.get(method)
    if saved is None:
        return None
    return max(0.0, 1.0 - saved / total)


def _reaches(view: PlannerView, ratio: float | None) -> bool:
    target = 1.0 - view.criteria.size_target_percent / 100.0
    return ratio is not None and ratio <= target + REACH_SLACK


def _ort_path(view: PlannerView, method: str) -> bool:
    """Whether `method` runs on ONNX Runtime here (an ONNX model, or a torch model exported by the tool)."""
    if view.runtime == "onnx":
        return method in _ORT_METHODS
    if view.device.startswith("cuda") or method not in _ORT_FOR_TORCH:
        return False
    # int8 weight-only keeps its torch path when the ONNX export failed once (int4 has no other CPU path).
    return method == "weight_only_int4" or not _ort_failed(view, method)


def _ort_failed(view: PlannerView, method: str) -> bool:
    def ort(c: ToolCall) -> bool:
        return c.arguments.get("method") == method and c.arguments.get("backend") == "onnxruntime"

    return any(t.status == "failed" and any(ort(c) for c in t.calls) for t in view.trials)


def _quant_args(view: PlannerView, method: str) -> dict[str, Any]:
    """A quantize call's arguments for `method` (4-bit and int8 weight-only for a torch model on a CPU go
    through ONNX Runtime)."""
    args: dict[str, Any] = {"method": method}
    if view.runtime != "onnx" and _ort_path(view, method):
        args["backend"] = "onnxruntime"
    return args


def _ort_order(view: PlannerView, facts: ProfileFacts, methods: tuple[str, ...]) -> list[tuple[str, str]]:
    """ONNX Runtime methods in the order to try them: those expected to reach the size target first,
    least lossy first, then the others by expected size; none that would shrink nothing or cannot run."""
    preset = view.criteria.criteria_name
    target = view.criteria.size_target_percent
    why = {
        "dynamic_int8": "per-channel int8 MatMul weights and int8 embedding tables, activations quantized at "
        "run time (ONNX Runtime dynamic int8, no data needed)",
        "static_int8": "int8 weights and calibrated int8 activations, convolutions included (ONNX Runtime "
        "QDQ)",
        "weight_only_int4": "4-bit block-wise MatMul weights (MatMulNBits) and 4-bit embedding tables",
        "weight_only_int8": "int8 weights per channel, float compute (folded at load: float speed, float "
        "accuracy)",
        "fp16": "fp16 halves every float tensor (float32 kept where fp16 would overflow)",
    }
    cands: list[tuple[str, float]] = []
    for method in methods:
        ratio = expected_ratio(facts, method)
        if ratio is None:
            if view.runtime != "onnx":
                continue
            ratio = {"weight_only_int4": 0.2, "fp16": 0.5}.get(method, 0.3)
        if ratio > USEFUL_RATIO:
            continue  # nothing this method quantizes holds the model's bytes
        if method == "static_int8" and view.runtime == "onnx" and not facts.has_inputs:
            continue  # calibration needs inputs; the profile knows no signature
        cands.append((method, ratio))
    rank = {m: i for i, m in enumerate(_ORT_METHODS)}
    weights = sum(facts.weight_bytes.values())
    if weights and facts.bytes_of(*_CONV_KINDS) >= 0.5 * weights:
        rank["static_int8"] = -0.5  # convolutions: QLinearConv kernels, where ConvInteger is slow
    if view.instructions.prefer_bits == 4 or preset == "max_compression":
        rank["weight_only_int4"] = -1
    reach = sorted((c for c in cands if _reaches(view, c[1])), key=lambda c: rank[c[0]])
    rest = sorted((c for c in cands if not _reaches(view, c[1])), key=lambda c: (c[1], rank[c[0]]))
    ordered = reach + rest
    if view.instructions.prefer_bits == 16 or preset == "accuracy_first":
        ordered = [c for c in ordered if c[0] == "fp16"] + [c for c in ordered if c[0] != "fp16"]
    out = []
    for method, ratio in ordered:
        reached = "reaching" if _reaches(view, ratio) else "short of"
        out.append(
            (
                method,
                f"{why[method]}: expected at about {100 * ratio:.0f}% of the size, {reached} the "
                f"{target:.0f}% reduction target",
            )
        )
    return out


def _is_quantized(recipe: list[ToolCall]) -> bool:
    return any(c.tool == "quantize" for c in recipe)


def _float_base(view: PlannerView) -> str:
    """The newest version on the current lineage that is not quantized (pruning works on floats)."""
    rec = view.current_record
    while rec.parent is not None and _is_quantized(rec.recipe):
        rec = view.versions[rec.parent]
    return rec.id


def _trials_on(view: PlannerView, base: str, tool: str) -> list[TrialRecord]:
    return [t for t in view.trials if t.base_version == base and any(c.tool == tool for c in t.calls)]


def _plain_quant(trials: list[TrialRecord]) -> list[TrialRecord]:
    """The trials that only quantized (no pruning in the same trial)."""
    return [t for t in trials if t.calls and all(c.tool == "quantize" for c in t.calls)]


def _quant_call(t: TrialRecord) -> ToolCall | None:
    return next((c for c in t.calls if c.tool == "quantize"), None)


def _prune_sensitivity(facts: ProfileFacts, skip: list[str]) -> list[str]:
    """For pruning: the input layer, then the smallest hidden layers (the output layer is never pruned)."""
    layers = list(facts.prunable) or list(facts.quantizable)
    order = layers[:1] + sorted(layers[1:-1], key=lambda n: facts.layer_params.get(n, 0))
    return [n for n in order if not any(fnmatch.fnmatch(n, p) for p in skip)]


def _quantization_step(view: PlannerView, facts: ProfileFacts) -> Action | None:
    if _is_quantized(view.current_record.recipe):
        return None
    base = view.current_version
    tried = _plain_quant(_trials_on(view, base, "quantize"))
    for method, why in ranked_quant_methods(view, facts):
        mine = [t for t in tried if (_quant_call(t) or ToolCall(tool="")).arguments.get("method") == method]
        if not mine:
            return Action(
                kind="tool",
                calls=[ToolCall(tool="quantize", arguments=_quant_args(view, method))],
                reasoning=f"{why}. Trying {method} on {base}.",
                strategy="quantize",
                meta={"method": method},
            )
        last = mine[-1]
        if last.status == "failed" or last.status == "accepted":
            continue  # unavailable here, or accepted then rolled back by the user
        if last.meets is False and _below_target(view, facts, method):
            sized = _size_target_action(view, facts, method, mine, base)
            if sized is not None:
                return sized
        if last.meets is False and _mixed_fits(view, facts, method, mine):
            peer = _lossless_peer(view, facts, method, tried)
            if peer is not None:
                return peer
            return _mixed_action(view, method, mine[0], base, "quantize_mixed")
        # A method that missed (and whose recovery missed, see `_recovery_step`) with no measured mix that
        # fits the budget is left: keeping a layer in float by guess is not better than the next method.
    return None


def _lossless_peer(
    view: PlannerView, facts: ProfileFacts, method: str, tried: list[TrialRecord]
) -> Action | None:
    """Before keeping layers of a lossy method in float (a larger model): int8 weight-only on ONNX Runtime,
    when not tried yet and expected no larger. Folded into float weights at load, it keeps float accuracy
    at int8's size: on a Llama ONNX export dynamic int8 kept 93.5% (floor 95%) and its per-layer mix
    97.7% at 41% smaller, where int8 weight-only stores every MatMul and the embedding table in int8."""
    peer = "weight_only_int8"
    if method == peer or not _ort_path(view, peer) or peer not in dict(ranked_quant_methods(view, facts)):
        return None
    if any(_method(_quant_call(t)) == peer for t in tried):
        return None
    mine, theirs = expected_ratio(facts, method), expected_ratio(facts, peer)
    if mine is not None and theirs is not None and theirs > mine + REACH_SLACK:
        return None
    return Action(
        kind="tool",
        calls=[ToolCall(tool="quantize", arguments=_quant_args(view, peer))],
        reasoning=(
            f"{method} missed the accuracy floor. Before keeping its costliest layers in float (a larger "
            f"model), {peer}: int8 weights per channel, folded into float weights at load, so float "
            "accuracy at the same size."
        ),
        strategy="quantize",
        meta={"method": peer},
    )


def _mixed_fits(view: PlannerView, facts: ProfileFacts, method: str, mine: list[TrialRecord]) -> bool:
    """Whether the measured mixed-precision fallback applies: a method with a per-layer choice (torch or ONNX
    Runtime), not tried yet, and its rounds (one quantize-and-evaluate per layer group, then a bisection)
    fit in what is left of the time budget."""
    if method not in MIXED_METHODS or (view.runtime == "onnx" and not _ort_path(view, method)):
        return False
    if method == "weight_only_int4" and not (_ort_path(view, method) or view.device.startswith("cuda")):
        return False
    if any(str(t.strategy or "").endswith("_mixed") for t in mine):
        return False
    layers = len(facts.quantizable) or MIXED_MAX_GROUPS
    groups = min(layers, MIXED_MAX_GROUPS)
    rounds = groups + max(1, groups.bit_length()) + 1
    per_round = max((t.duration_s for t in mine if not t.tool_metrics.get("recovery")), default=0.0)
    spent = max(view.elapsed_s, sum(t.duration_s for t in view.trials))
    budget = view.criteria.time_budget_s or 900.0
    return spent + rounds * per_round <= budget


def mixed_target(floor: float) -> float:
    """What the mixed-precision search aims for: the floor plus one standard error of an agreement rate
    measured on the gate's samples (at most half the allowed loss), so the mix that just meets the floor
    on the session's data also holds on other inputs (0.97 -> 0.981, 0.99 -> 0.995)."""
    stderr = (floor * (1.0 - floor) / EVAL_SAMPLES) ** 0.5
    return round(min(1.0, floor + min(stderr, 0.5 * (1.0 - floor))), 4)


def _mixed_action(view: PlannerView, method: str, plain: TrialRecord, base: str, strategy: str) -> Action:
    target = mixed_target(view.criteria.accuracy_floor)
    args = {**_quant_args(view, method), "accuracy_target": target}
    return Action(
        kind="tool",
        calls=[ToolCall(tool="quantize", arguments=args)],
        base_version=base,
        reasoning=(
            f"{method} cost too much accuracy ({100 * _retained(plain):.2f}% retained, floor "
            f"{100 * view.criteria.accuracy_floor:.1f}%). Mixed precision by measured sensitivity: the tool "
            "quantizes one layer group at a time, ranks the groups by the accuracy they cost per byte they "
            f"save, and keeps the costliest at higher precision until {100 * target:.1f}% is retained."
        ),
        strategy=strategy,
        meta={"method": method, "accuracy_target": target},
    )


def _bit_escalation_step(view: PlannerView, facts: ProfileFacts) -> Action | None:
    """Quantized already but short of the size target: try a lower-bit method on the float base."""
    rec = view.current_record
    if not _is_quantized(rec.recipe):
        return None
    current_method = next(c.arguments.get("method") for c in rec.recipe if c.tool == "quantize")
    current_bits = _BITS.get(str(current_method), 8)
    base = _float_base(view)
    on_base = _trials_on(view, base, "quantize")
    tried_methods = {str((_quant_call(t) or ToolCall(tool="")).arguments.get("method")) for t in on_base}
    prune_calls = [c for c in rec.recipe if c.tool in ("prune", "distill")]  # the float lineage, recovered
    for method, _why in ranked_quant_methods(view, facts):
        mine = [
            t
            for t in _plain_quant(on_base)
            if (_quant_call(t) or ToolCall(tool="")).arguments.get("method") == method
        ]
        if prune_calls or _BITS.get(method, 16) >= current_bits or not mine or mine[-1].meets is not False:
            continue
        sized = _size_target_action(view, facts, method, mine, base)
        if sized is not None:
            return sized
        if _mixed_fits(view, facts, method, mine):
            return _mixed_action(view, method, mine[0], base, "quantize_lower_bits_mixed")
    for method, why in ranked_quant_methods(view, facts):
        if _BITS.get(method, 16) < current_bits and method not in tried_methods:
            return Action(
                kind="tool",
                calls=[*prune_calls, ToolCall(tool="quantize", arguments=_quant_args(view, method))],
                base_version=base if not prune_calls else _root_float(view),
                reasoning=(
                    f"{current_method} left the model {size_reduction_percent(view.baseline, view.current):.1f}% "  # noqa: E501
                    f"smaller, short of the {view.criteria.size_target_percent:.0f}% target; {why}."
                ),
                strategy="quantize_lower_bits",
                meta={"method": method},
            )
    return None


def _below_target(view: PlannerView, facts: ProfileFacts, method: str) -> bool:
    """Whether `method` everywhere would be smaller than the size target (so a mix of it with higher
    precision can still reach it); 4-bit is, when the profile holds no byte counts to tell."""
    ratio = expected_ratio(facts, method)
    if ratio is None:
        return _BITS.get(method, 16) <= 4
    return _reaches(view, ratio)


def _size_target_action(
    view: PlannerView, facts: ProfileFacts, method: str, mine: list[TrialRecord], base: str
) -> Action | None:
    """`method` under the session's size target itself: per-layer precision (float, 8-bit, 4-bit) from
    measured costs, the least costly mix that fits (quantize's `size_target`), once per method and base."""
    sized = ("quantize_size_target", "quantize_size_target_alternative")
    if method not in MIXED_METHODS or any(t.strategy in sized for t in mine):
        return None
    if method == "weight_only_int4" and not (_ort_path(view, method) or view.device.startswith("cuda")):
        return None
    base_m = view.versions[base].measurement or {}
    base_bytes = int(base_m.get("size_bytes") or view.baseline.size_bytes)
    target_bytes = view.baseline.size_bytes * (1.0 - view.criteria.size_target_percent / 100.0)
    ratio = round(target_bytes / max(base_bytes, 1), 4)
    if not 0.0 < ratio < 1.0:
        return None
    groups = min(len(facts.quantizable) or MIXED_MAX_GROUPS, MIXED_MAX_GROUPS)
    per_round = max((t.duration_s for t in mine if not t.tool_metrics.get("recovery")), default=0.0)
    budget = view.criteria.time_budget_s or 900.0
    if max(view.elapsed_s, sum(t.duration_s for t in view.trials)) + (2 * groups + 3) * per_round > budget:
        return None
    plain = mine[0]
    args: dict[str, Any] = {**_quant_args(view, method), "size_target": ratio}
    if method == "weight_only_int4" and _ort_path(view, method):
        # Whole layers when they retain enough: a layer split between 4-bit and int8 is a little slower.
        args["accuracy_target"] = mixed_target(view.criteria.accuracy_floor)
    return Action(
        kind="tool",
        calls=[ToolCall(tool="quantize", arguments=args)],
        base_version=base,
        reasoning=(
            f"{method} everywhere cost too much accuracy ({100 * _retained(plain):.2f}% retained, floor "
            f"{100 * view.criteria.accuracy_floor:.1f}%). Mixed precision under the size target: the tool "
            "measures what each layer group costs alone at each precision and picks, by a knapsack over "
            f"those costs, the precisions that bring the model to {100 * ratio:.1f}% of {base}'s size at the "
            "least cost."
        ),
        strategy="quantize_size_target",
        meta={"method": method, "size_target": ratio, "accuracy_target": args.get("accuracy_target")},
    )


def _alternative_step(view: PlannerView, facts: ProfileFacts) -> Action | None:
    """ONNX Runtime: the other methods the ranking offers, on the same float base, for the gate to compare.

    The methods trade size, speed and accuracy differently per model (4-bit blocks are the smallest, but
    MatMulNBits runs slower than dynamic int8 beyond a few tokens), so one accepted quantization is not
    the end: each method expected to come within `ALTERNATIVE_SLACK` of the current size
    is measured once, with its measured mixed-precision fallback when it misses the floor. Once the target
    is reached a method a little larger still counts (the objective stops paying for size at the target
    and pays for speed).
    """
    rec = view.current_record
    if view.runtime != "onnx" or not _is_quantized(rec.recipe) or any(c.tool == "prune" for c in rec.recipe):
        return None
    base = _float_base(view)
    base_m = view.versions[base].measurement or {}
    base_bytes = max(int(base_m.get("size_bytes") or view.baseline.size_bytes), 1)
    current = view.current.size_bytes / base_bytes
    on_base = _trials_on(view, base, "quantize")
    for method, why in ranked_quant_methods(view, facts):
        expected = expected_ratio(facts, method)
        if expected is not None and expected > current + ALTERNATIVE_SLACK:
            continue  # cannot come near the current size
        mine = [
            t
            for t in _plain_quant(on_base)
            if (_quant_call(t) or ToolCall(tool="")).arguments.get("method") == method
        ]
        if not mine:
            return Action(
                kind="tool",
                calls=[ToolCall(tool="quantize", arguments=_quant_args(view, method))],
                base_version=base,
                reasoning=(
                    f"The current version is at {100 * current:.1f}% of the float size; {why}. Measuring "
                    f"{method} on the same base; the gate keeps it only if it scores higher."
                ),
                strategy="quantize_alternative",
                meta={"method": method},
            )
        if mine[-1].meets is False and _mixed_fits(view, facts, method, mine):
            return _mixed_action(view, method, mine[0], base, "quantize_alternative_mixed")
    return None


def _root_float(view: PlannerView) -> str:
    rec = view.current_record
    while rec.parent is not None:
        rec = view.versions[rec.parent]
    return rec.id


# ------------------------------------------------------------------------------------------
# Pruning: bisection on the amount against the accuracy floor
# ------------------------------------------------------------------------------------------


def _prune_method(view: PlannerView) -> str | None:
    offered = view.method_choices.get("prune") or ["structured", "magnitude"]
    for m in ("structured", "magnitude"):
        if m in offered:
            return m
    return None


def _needed_amount(view: PlannerView, quant_ratio: float) -> float:
    """Fraction of weights to remove so that, after re-quantizing, the size target is met."""
    target_ratio = 1.0 - view.criteria.size_target_percent / 100.0
    need = 1.0 - target_ratio / max(quant_ratio, 1e-6)
    return min(MAX_PRUNE_AMOUNT, max(0.05, need))


def _pruning_step(view: PlannerView, facts: ProfileFacts) -> Action | None:
    if "pruning" not in view.allowed_techniques():
        return None
    method = _prune_method(view)
    if method is None or not facts.prunable:
        return None
    base = _float_base(view)
    base_rec = view.versions[base]
    base_m = Measurement.model_validate(base_rec.measurement) if base_rec.measurement else view.baseline
    rec = view.current_record
    requant = [c for c in rec.recipe if c.tool == "quantize"]
    quant_ratio = view.current.size_bytes / max(base_m.size_bytes, 1) if requant else 1.0
    trials = [t for t in _trials_on(view, base, "prune") if t.meta.get("method") == method]
    restarts = max([int(t.meta.get("restart", 0)) for t in trials] or [0])
    exclude = list(
        next((t.meta.get("exclude", []) for t in trials if t.meta.get("restart", 0) == restarts), [])
    )
    search = [t for t in trials if int(t.meta.get("restart", 0)) == restarts]

    if any(t.status == "failed" for t in search):
        return None  # the tool cannot prune this model (format, method)
    if search and method == "magnitude":
        first = search[0]
        if first.measurement and first.status != "failed":
            gained = size_reduction_percent(view.baseline, Measurement.model_validate(first.measurement))
            if gained <= size_reduction_percent(view.baseline, view.current) + 0.5 and first.meets:
                return None  # unstructured sparsity does not shrink dense storage here: no gain to find

    # The amount the target needs is fixed by the first candidate of a search (later versions
    # already include pruning, so recomputing it from them would move the goalposts).
    needed = float(search[0].meta.get("needed", 0.5)) if search else _needed_amount(view, quant_ratio)
    good = [float(t.meta["amount"]) for t in search if t.meets]
    bad = [float(t.meta["amount"]) for t in search if t.meets is False]
    lo = max(good, default=0.0)
    hi = min([a for a in bad if a > lo], default=None)
    if not search:
        amount = needed
        why = (
            f"Quantization alone leaves the model at {100 * quant_ratio:.0f}% of its float size; "
            f"reaching the {view.criteria.size_target_percent:.0f}% target needs about {100 * needed:.0f}% "
            f"of the weights removed. Starting the pruning search there ({method}, then re-quantizing)."
        )
    elif hi is None:
        if lo >= needed - AMOUNT_EPS:
            # The amount the target needs met the floor. Once the gate kept it, the search is over;
            # if it turned it down, the same pruning under a quantization found since is a new
            # candidate (a repeat of a tried recipe is skipped in `decide`).
            if any(t.status == "accepted" for t in search):
                return None
            amount = lo
            why = (
                f"{100 * lo:.0f}% pruning met the accuracy floor but did not raise the score with the "
                "quantization of the time; trying it with the current quantization."
            )
        else:
            amount = min(MAX_PRUNE_AMOUNT, needed)
            why = (
                f"{100 * lo:.0f}% pruning met the floor; trying the amount the target needs, "
                f"{100 * amount:.0f}%."
            )
    else:
        if hi - lo <= MIN_AMOUNT_STEP or (lo == 0.0 and hi <= MIN_USEFUL_AMOUNT):
            if lo == 0.0 and restarts == 0:
                layer = next(iter(_prune_sensitivity(facts, view.instructions.exclude_prune)), None)
                if layer is None:
                    return None
                exclude = [layer]
                amount = min(needed, RESTART_AMOUNT)
                return _prune_action(
                    view,
                    base,
                    method,
                    amount,
                    exclude,
                    requant,
                    restarts + 1,
                    needed,
                    0.0,
                    None,
                    f"Even {100 * hi:.0f}% pruning broke the accuracy floor. Per-layer fallback: excluding "
                    f"'{layer}' (most sensitive) from pruning; restarting the search at {100 * amount:.0f}%.",
                )
            return None  # converged
        amount = (lo + hi) / 2.0
        why = (
            f"Bisection on the pruning amount: {100 * lo:.0f}% met the accuracy floor, {100 * hi:.0f}% did not; "  # noqa: E501
            f"trying {100 * amount:.1f}%."
        )
    return _prune_action(view, base, method, amount, exclude, requant, restarts, needed, lo, hi, why)


def _prune_action(
    view: PlannerView,
    base: str,
    method: str,
    amount: float,
    exclude: list[str],
    requant: list[ToolCall],
    restart: int,
    needed: float,
    lo: float,
    hi: float | None,
    why: str,
) -> Action:
    args: dict[str, Any] = {"method": method, "amount": round(amount, 4)}
    if exclude:
        args["exclude"] = list(exclude)
    calls = [ToolCall(tool="prune", arguments=args), *requant]
    recovered = with_recovery(calls[:1], view) if method == "structured" and distillation_pays(view) else None
    if recovered is not None:
        calls = [*recovered, *requant]
        why += " Distilling the pruned model from the original before re-quantizing (recovery in the loop)."
    return Action(
        kind="tool",
        calls=calls,
        base_version=base,
        reasoning=why,
        strategy="prune_search",
        meta={
            "method": method,
            "amount": round(amount, 4),
            "lo": lo,
            "hi": hi,
            "restart": restart,
            "exclude": exclude,
            "needed": needed,
        },
    )


# ------------------------------------------------------------------------------------------
# Latency, once the size goal is met
# ------------------------------------------------------------------------------------------

# Methods in the order they tend to run fastest, by device (CPU: ONNX Runtime's int8 kernels with
# quantized activations beat dynamic int8, which beats weight-only storage; GPU: fewer weight bytes).
_SPEED_ORDER = {
    "cpu": ("static_int8", "dynamic_int8"),
    "cuda": ("weight_only_int4", "weight_only_int8", "bf16", "fp16"),
}
MAX_REQUANT_TRIALS = 2
SPEED_PRUNE_STEP = 0.12  # stop the speed search when the bracket is this narrow
SPEED_PRUNE_MIN_WEIGHT = 1.0  # presets whose objective weighs speed at least this much
INT8_PRUNE_AMOUNT = 0.25  # first amount of the pruning that takes an 8-bit method to the size target


def _speed_step(view: PlannerView, facts: ProfileFacts) -> Action | None:
    return (
        _requant_step(view, facts)
        or _alternative_step(view, facts)
        or _sized_alternative_step(view, facts)
        or _prune_for_int8_step(view, facts)
        or _speed_prune_step(view, facts)
    )


# Recovery budgets move with the time left: two calls that differ only in them are the same trial.
_BUDGET_ARGUMENTS = ("steps", "time_budget_s", "recovery_steps", "recovery_time_s")


def _calls_key(calls: list[ToolCall]) -> str:
    def key(c: ToolCall) -> dict[str, Any]:
        if c.tool == "distill" or c.arguments.get("recovery") == "qat":
            return {
                "tool": c.tool,
                "arguments": {k: v for k, v in c.arguments.items() if k not in _BUDGET_ARGUMENTS},
            }
        return c.model_dump()

    return json.dumps([key(c) for c in calls], sort_keys=True)


def _requant_step(view: PlannerView, facts: ProfileFacts) -> Action | None:
    """The current lineage with a quantization method of no more bits that may run faster here."""
    rec = view.current_record
    quant = [c for c in rec.recipe if c.tool == "quantize"]
    if not quant or view.runtime == "onnx":
        return None
    if sum(t.strategy == "requantize_for_speed" for t in view.trials) >= MAX_REQUANT_TRIALS:
        return None
    current = str(quant[-1].arguments.get("method"))
    prune_calls = [c for c in rec.recipe if c.tool in ("prune", "distill")]  # the float lineage, recovered
    tried = {_calls_key(t.calls) for t in view.trials}
    # A method that could not run here, or broke the floor on its own, will not do better now.
    hopeless = {
        str(c.arguments.get("method"))
        for t in view.trials
        if t.status == "failed" or (t.meets is False and not any(x.tool == "prune" for x in t.calls))
        for c in t.calls
        if c.tool == "quantize"
    }
    ranked = dict(ranked_quant_methods(view, facts))
    order = _SPEED_ORDER["cuda" if view.device.startswith("cuda") else "cpu"]
    # Only methods expected to run faster than the current one (earlier in the device's order).
    faster = order[: order.index(current)] if current in order else order
    for method in faster:
        if method not in ranked or method in hopeless:
            continue
        if _BITS.get(method, 16) > _BITS.get(current, 16):
            continue
        args: dict[str, Any] = _quant_args(view, method)
        if quant[-1].arguments.get("exclude"):
            args["exclude"] = list(quant[-1].arguments["exclude"])
        calls = [*prune_calls, ToolCall(tool="quantize", arguments=args)]
        if _calls_key(calls) in tried:
            continue
        return Action(
            kind="tool",
            calls=calls,
            base_version=_root_float(view) if prune_calls else _float_base(view),
            reasoning=(
                f"The size goal is met ({size_reduction_percent(view.baseline, view.current):.1f}% smaller) "
                f"at {speedup(view.baseline, view.current):.2f}x the original's speed. {ranked[method]}; "
                f"{method} on the same lineage may run faster than {current}; the gate keeps it only if "
                "it raises the score."
            ),
            strategy="requantize_for_speed",
            meta={"method": method},
        )
    return None


def _sized_alternative_step(view: PlannerView, facts: ProfileFacts) -> Action | None:
    """The goal was reached with 4-bit weights everywhere (ONNX Runtime), smaller than the target asks:
    the same method under the size target, which gives the layers that cost the most accuracy per byte
    back in int8. That int8 is folded into float weights at load, so the mix is at least as accurate
    and often faster than MatMulNBits everywhere: on vla-mini 3.66x against 3.30x the original's speed,
    99.91% against 99.79% of its action-token accuracy, and all of its closed-loop success against 93%."""
    rec = view.current_record
    quant = [c for c in rec.recipe if c.tool == "quantize"]
    if len(quant) != 1 or any(c.tool in ("prune", "distill") for c in rec.recipe):
        return None
    call = quant[0]
    if _method(call) != "weight_only_int4" or not _ort_path(view, "weight_only_int4"):
        return None
    if call.arguments.get("size_target") is not None or call.arguments.get("accuracy_target") is not None:
        return None
    if size_reduction_percent(view.baseline, view.current) < view.criteria.size_target_percent + 1.0:
        return None  # no room: the mix could give nothing back
    base = _float_base(view)
    mine = [
        t
        for t in _plain_quant(_trials_on(view, base, "quantize"))
        if _method(_quant_call(t)) == "weight_only_int4"
    ]
    action = _size_target_action(view, facts, "weight_only_int4", mine, base)
    if action is None:
        return None
    return action.model_copy(
        update={
            "reasoning": (
                f"The goal is reached with 4-bit weights everywhere, "
                f"{size_reduction_percent(view.baseline, view.current):.1f}% smaller where the target is "
                f"{view.criteria.size_target_percent:.0f}%. Under the size target itself the tool measures "
                "what each layer group costs in 4-bit and in int8 and keeps the costliest in int8 (folded "
                "into float at load: as fast as float on ONNX Runtime); the gate keeps the mix only if it "
                "scores higher."
            ),
            "strategy": "quantize_size_target_alternative",
        }
    )


def _prune_for_int8_step(view: PlannerView, facts: ProfileFacts) -> Action | None:
    """The size goal was reached with sub-8-bit weights, where an 8-bit method kept the floor but missed
    the size: structured pruning (distilled) that brings that 8-bit method to the target instead (also when
    the gate went on to keep the 8-bit version itself).

    On a CPU 8-bit weights folded at load run at float speed and 4-bit blocks (or a layer split between
    4-bit and int8) do not, and a pruned model is faster and lighter still: on the reacher policy 25%
    pruned, distilled and int8 ran 6.2x faster than the original where the 4-bit mix ran 2.6x, both at the
    floor. When no 8-bit method was measured on its own, int8 weight-only on ONNX Runtime is measured first:
    an 8-bit version a little short of the target may score higher than the 4-bit one (the objective stops
    paying for size at the target and pays for speed: on vla-mini 2.65x at 71.9% smaller against the 4-bit
    mix's 2.29x at 75.3%), and its measured size sets the pruning. The first amount is a quarter of the
    channels (what distillation brought back within the floor on the eval policies) or what the target
    needs if more; when it misses the floor, the amount the target needs, once, estimated from the size
    the first amount removed (structured pruning leaves embeddings and norms whole). The gate keeps each
    only if it raises the score.
    """
    if "pruning" not in view.allowed_techniques() or not facts.prunable or view.runtime == "onnx":
        return None
    if view.device.startswith("cuda") or "structured" not in (
        view.method_choices.get("prune") or ["structured"]
    ):
        return None  # on a GPU 4-bit weights are the fast ones
    rec = view.current_record
    quant = [c for c in rec.recipe if c.tool == "quantize"]
    # The current version: sub-8-bit, or the 8-bit one itself when the gate preferred it (a little short of
    # the target, faster): the same move either way, which latency noise between the two must not decide.
    bits = _BITS.get(_method(quant[-1]), 16) if quant else 16
    if not quant or any(c.tool == "prune" for c in rec.recipe) or bits > 8:
        return None
    if bits == 8 and not _reached_below_8_bits(view):
        return None
    root = _root_float(view)
    base_m = view.versions[root].measurement or {}
    base_bytes = max(int(base_m.get("size_bytes") or view.baseline.size_bytes), 1)
    tried = [
        t for t in _plain_quant(_trials_on(view, root, "quantize")) if _BITS.get(_method(_quant_call(t))) == 8
    ]
    kept = [t for t in tried if t.meets and t.measurement]
    if kept:
        # The smallest 8-bit version that kept the floor: the least pruning to the target.
        best = min(kept, key=lambda t: int((t.measurement or {}).get("size_bytes") or base_bytes))
        call = _quant_call(best)
        ratio = int((best.measurement or {}).get("size_bytes") or base_bytes) / base_bytes
        source = f"kept the floor (trial {best.number}) at {100 * ratio:.1f}% of the size"
    elif (
        bits < 8
        and not tried
        and _ort_path(view, "weight_only_int8")
        and "weight_only_int8" in dict(ranked_quant_methods(view, facts))
    ):
        return _int8_for_speed_action(view, root, quant[-1])
    else:
        return None
    needed = _needed_amount(view, ratio)
    searched = [t for t in view.trials if t.strategy == "prune_for_int8"]
    if not searched:
        amount = max(needed, INT8_PRUNE_AMOUNT)
    elif len(searched) == 1 and searched[0].meets is False:
        first = searched[0]
        amount = _amount_for_target(view, first, ratio, base_bytes, fallback=needed)
        if amount >= float(first.meta.get("amount", 0.0)) - 1e-6:
            return None  # the target needs at least what already broke the floor
    else:
        return None
    assert call is not None
    args: dict[str, Any] = {"method": "structured", "amount": round(amount, 4)}
    prune = [ToolCall(tool="prune", arguments=args)]
    prune = (with_recovery(prune, view, qat=False) if distillation_pays(view) else None) or prune
    current = _method(quant[-1])
    return Action(
        kind="tool",
        calls=[*prune, ToolCall(tool="quantize", arguments=dict(call.arguments))],
        base_version=root,
        reasoning=(
            f"The current version ({current}) is "
            f"{size_reduction_percent(view.baseline, view.current):.1f}% smaller at "
            f"{speedup(view.baseline, view.current):.2f}x the original's speed. "
            f"{_method(call)} {source}; pruning {100 * amount:.0f}% of the channels "
            "(distilled from the original) takes it to the target, and 8-bit weights on a pruned model run "
            f"faster than {current}. The gate keeps it only if the score rises."
        ),
        strategy="prune_for_int8",
        meta={"method": "structured", "amount": round(amount, 4), "needed": needed, "int8": _method(call)},
    )


def _reached_below_8_bits(view: PlannerView) -> bool:
    """Whether a trial with sub-8-bit weights reached the size goal within the floor."""
    for t in view.trials:
        if not t.meets or not t.measurement:
            continue
        if not any(c.tool == "quantize" and _BITS.get(_method(c), 16) < 8 for c in t.calls):
            continue
        if goal_reached(view.criteria, view.baseline, Measurement.model_validate(t.measurement)):
            return True
    return False


def _int8_for_speed_action(view: PlannerView, root: str, current: ToolCall) -> Action:
    call = ToolCall(tool="quantize", arguments=_quant_args(view, "weight_only_int8"))
    return Action(
        kind="tool",
        calls=[call],
        base_version=root,
        reasoning=(
            f"The size goal is met with {_method(current)} at "
            f"{speedup(view.baseline, view.current):.2f}x the original's speed. int8 weight-only on ONNX "
            "Runtime is folded into float weights at load: float accuracy at float speed on a CPU, a little "
            "larger than the target may allow. Measuring it on its own: the gate keeps it if it scores "
            "higher (the objective stops paying for size at the target), and its size sets how much pruning "
            "would take it to the target."
        ),
        strategy="int8_for_speed",
        meta={"method": "weight_only_int8"},
    )


def _amount_for_target(
    view: PlannerView, first: TrialRecord, ratio: float, base_bytes: int, *, fallback: float
) -> float:
    """The pruning amount that takes an 8-bit version at `ratio` of the size to the target, from what the
    first amount removed (a model's embeddings and norms do not shrink with its channels)."""
    amount = float(first.meta.get("amount", 0.0))
    size = int((first.measurement or {}).get("size_bytes") or 0)
    if amount <= 0 or size <= 0 or first.status == "failed":
        return fallback
    removed_per_amount = (ratio - size / base_bytes) / amount
    if removed_per_amount <= 1e-6:
        return fallback
    target_ratio = 1.0 - view.criteria.size_target_percent / 100.0
    return round(max(0.05, (ratio - target_ratio) / removed_per_amount), 4)


def _method(call: ToolCall | None) -> str:
    return str(call.arguments.get("method")) if call is not None else ""


def _speed_prune_step(view: PlannerView, facts: ProfileFacts) -> Action | None:
    """Structured pruning past the size target, for latency: a search on the amount the gate accepts."""
    criteria = view.criteria
    if criteria.preset.w_speed < SPEED_PRUNE_MIN_WEIGHT and criteria.target_latency_ms is None:
        return None
    if "pruning" not in view.allowed_techniques() or not facts.prunable:
        return None
    if "structured" not in (view.method_choices.get("prune") or ["structured"]):
        return None
    rec = view.current_record
    prune_now = next((c for c in rec.recipe if c.tool == "prune"), None)
    if prune_now is not None and prune_now.arguments.get("method") != "structured":
        return None
    start = float(prune_now.arguments.get("amount", 0.0)) if prune_now is not None else 0.0
    exclude = list(prune_now.arguments.get("exclude") or []) if prune_now is not None else []
    searched = [t for t in view.trials if t.strategy == "prune_for_speed"]
    if any(t.status == "failed" for t in searched):
        return None
    good = [start] + [float(t.meta["amount"]) for t in searched if t.status == "accepted"]
    lo = max(good)
    hi = min(
        [float(t.meta["amount"]) for t in searched if t.status != "accepted" and t.meta["amount"] > lo],
        default=None,
    )
    if hi is None:
        if lo >= MAX_PRUNE_AMOUNT - SPEED_PRUNE_STEP:
            return None
        amount = lo + (MAX_PRUNE_AMOUNT - lo) / 2.0
        why = (
            f"Structured pruning removes whole channels, so the model runs faster as well as smaller. "
            f"{'No pruning yet' if lo == 0 else f'{100 * lo:.0f}% was accepted'}; trying {100 * amount:.0f}% "
            "(re-applying the accepted quantization); the gate keeps it only if the score rises."
        )
    else:
        if hi - lo <= SPEED_PRUNE_STEP:
            return None
        amount = (lo + hi) / 2.0
        why = (
            f"Search on structured pruning for speed: {100 * lo:.0f}% is the best accepted so far, "
            f"{100 * hi:.0f}% was not an improvement; trying {100 * amount:.1f}%."
        )
    requant = [c for c in rec.recipe if c.tool == "quantize"]
    args: dict[str, Any] = {"method": "structured", "amount": round(amount, 4)}
    if exclude:
        args["exclude"] = exclude
    prune_calls = (
        with_recovery([ToolCall(tool="prune", arguments=args)], view) if distillation_pays(view) else None
    ) or [ToolCall(tool="prune", arguments=args)]
    return Action(
        kind="tool",
        calls=[*prune_calls, *requant],
        base_version=_root_float(view),
        reasoning=why,
        strategy="prune_for_speed",
        meta={"method": "structured", "amount": round(amount, 4), "lo": lo, "hi": hi},
    )


# ------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------
# Recovery: distillation after pruning, quantization-aware training
# ------------------------------------------------------------------------------------------


def recovery_seconds(view: PlannerView) -> float | None:
    """Seconds one recovery may train: a share of what is left of the session's time budget, at most
    `RECOVERY_MAX_S` and a quarter of the budget's per-trial share; None when too little is left to be
    worth it."""
    budget = view.criteria.time_budget_s or 900.0
    left = budget - max(view.elapsed_s, sum(t.duration_s for t in view.trials))
    trials = view.criteria.max_trials or 12
    seconds = min(RECOVERY_MAX_S, RECOVERY_SHARE * left, budget / (4 * trials))
    return round(seconds, 1) if seconds >= RECOVERY_MIN_S else None


def distillation_pays(view: PlannerView) -> bool:
    """Whether distilling pruned candidates still buys accuracy in this session: not once a distillation
    closed less than `RECOVERY_MIN_SHARE` of its candidate's gap to the floor (a model it cannot help
    within the budget: the search goes on without paying for it)."""
    floor = view.criteria.accuracy_floor
    for t in view.trials:
        recovery = t.tool_metrics.get("recovery") or {}
        for part in recovery.get("steps_by_tool", []):
            before = part.get("accuracy_retained_before")
            if part.get("tool") != "distill" or before is None or float(before) >= floor:
                continue
            if float(part.get("accuracy_gained") or 0.0) < RECOVERY_MIN_SHARE * (floor - float(before)):
                return False
    return True


def _small(view: PlannerView) -> bool:
    total = int(view.profile.get("total_parameters") or 0)
    return 0 < total <= SMALL_MODEL_PARAMS


def distill_arguments(view: PlannerView, amount: float = 0.5) -> dict[str, Any] | None:
    """Distillation after pruning `amount`: a student pruned a little starts near its teacher and a large
    step throws that away (on the reacher policy, 5% pruned: 0.99 of the floor's metric at lr 1e-3, 0.97
    at 3e-3), one pruned by half needs the larger step (0.96 against 0.998, 600 steps each)."""
    seconds = recovery_seconds(view)
    if seconds is None:
        return None
    if not _small(view):
        return {"steps": RECOVERY_STEPS, "time_budget_s": seconds, "learning_rate": 5e-4, "batch_size": 32}
    gentle = amount <= GENTLE_PRUNE_AMOUNT
    return {
        "steps": SMALL_DISTILL_STEPS,
        "time_budget_s": seconds,
        "learning_rate": 1e-3 if gentle else 3e-3,
        "batch_size": 128 if gentle else 256,
    }


def qat_arguments(view: PlannerView) -> dict[str, Any] | None:
    seconds = recovery_seconds(view)
    if seconds is None:
        return None
    return {
        "recovery": "qat",
        "recovery_steps": RECOVERY_STEPS,
        "recovery_time_s": seconds,
        "recovery_learning_rate": 1e-3 if _small(view) else 1e-4,
    }


def with_recovery(calls: list[ToolCall], view: PlannerView, *, qat: bool = True) -> list[ToolCall] | None:
    """`calls` with recovery where it applies: distill right after structured pruning (magnitude pruning's
    zeros would not survive training), quantization-aware training of an int8 / 4-bit quantization of a
    torch model. None when nothing changes (no step to recover, or no time for it)."""
    out: list[ToolCall] = []
    changed = False
    for i, call in enumerate(calls):
        args = call.arguments
        if call.tool == "prune" and args.get("method") == "structured" and view.runtime != "onnx":
            out.append(call)
            nxt = calls[i + 1] if i + 1 < len(calls) else None
            d = distill_arguments(view, float(args.get("amount", 0.5)))
            if d is not None and (nxt is None or nxt.tool != "distill"):
                out.append(ToolCall(tool="distill", arguments=d))
                changed = True
        elif (
            qat
            and call.tool == "quantize"
            and view.runtime != "onnx"
            and args.get("method") in QAT_METHODS
            and args.get("recovery", "none") == "none"
            and args.get("accuracy_target") is None
            and args.get("size_target") is None
            and (q := qat_arguments(view)) is not None
        ):
            out.append(ToolCall(tool="quantize", arguments={**args, **q}))
            changed = True
        else:
            out.append(call)
    return out if changed else None


def _recovered(calls: list[ToolCall]) -> bool:
    return any(c.tool == "distill" or c.arguments.get("recovery") == "qat" for c in calls)


def _recovery_step(view: PlannerView, facts: ProfileFacts) -> Action | None:
    """The last candidate missed the accuracy floor: the same calls with recovery, measured again."""
    if not view.trials:
        return None
    last = view.trials[-1]
    if last.status == "failed" or last.meets is not False or _recovered(last.calls):
        return None
    if _retained(last) + 1e-9 >= view.criteria.accuracy_floor:
        return None  # it missed the latency target, not the floor: training will not make it faster
    # Quantization-aware training moves weights within their grid: it closes small gaps (a few points),
    # not a quantization that loses a third of the accuracy (measured mixed precision is next for those).
    calls = with_recovery(last.calls, view, qat=view.criteria.accuracy_floor - _retained(last) <= QAT_MAX_GAP)
    if calls is None:
        return None
    how = sorted({"distillation" if c.tool == "distill" else "quantization-aware training"
                  for c in calls if c.tool == "distill" or c.arguments.get("recovery") == "qat"})  # fmt: skip
    seconds = recovery_seconds(view)
    return Action(
        kind="tool",
        calls=calls,
        base_version=last.base_version,
        reasoning=(
            f"Trial {last.number} kept {100 * _retained(last):.2f}% of the accuracy, below the "
            f"{100 * view.criteria.accuracy_floor:.1f}% floor. Recovering it with {' and '.join(how)} from "
            f"the original (at most {seconds:.0f} s of training of the time left) and measuring it again."
        ),
        strategy="recover",
        meta={**last.meta, "recovers": last.number, "accuracy_before_recovery": _retained(last)},
    )


def _retained(t: TrialRecord) -> float:
    return float((t.measurement or {}).get("accuracy_retained", 0.0))


def _finish(reason: str) -> Action:
    return Action(kind="finish", reasoning=reason, strategy="finish")


def _fresh(action: Action | None, view: PlannerView) -> Action | None:
    """The action as it will run (instructions applied), or None if that exact trial was already made."""
    if action is None:
        return None
    action = _constrained(action, view)
    if action.kind != "tool":
        return action
    base = action.base_version or view.current_version
    key = _calls_key(action.calls)
    if any(t.base_version == base and _calls_key(t.calls) == key for t in view.trials):
        return None
    return action


def _constrained(action: Action, view: PlannerView) -> Action:
    calls = []
    for call in action.calls:
        problem = check_allowed(call, view)
        if problem:
            return _finish(f"Stopping: {problem}.")
        calls.append(enforce_instructions(call, view.instructions))
    return action.model_copy(update={"calls": calls})
