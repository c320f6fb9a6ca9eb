"""The offline planner: an expert strategy driven by the profile and by what earlier trials measured.

Order of play (each step is re-derived from the trial history, so a resumed session continues
where it stopped):

1. Quantize, cheapest high-yield method first for this model and device (dynamic int8 for a
   Linear-heavy model on a CPU; fp16/bf16 then int8/int4 weight-only on a GPU; 4-bit first when
   the user asked for it). When a method costs too much accuracy, fall back per layer: keep the
   most sensitive layer (the output head, then the input layer, then the smallest) in floating
   point and retry, up to `MAX_FALLBACKS` times, before moving to the next method.
2. When the size target is still not reached and pruning is allowed: bisection on the pruning
   amount against the accuracy floor, starting at the amount the size target needs; each
   candidate prunes the last floating-point version and re-applies the accepted quantization.
   When even the smallest amount fails, the most sensitive layer is excluded and the search
   restarts once.
3. Once the size goal is reached (or nothing above helps), spend what is left of the budget on
   latency: re-quantize the same lineage with a method of no more bits that runs faster here
   (static int8 on ONNX Runtime kernels on a CPU; int4/int8 weight-only kernels on a GPU), then,
   for presets that value speed, a search on structured pruning beyond the size target, where a
   step counts only if the gate accepted it (it must raise the objective, not just keep the floor).
4. Finish when nothing left is expected to help.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

from agents.criteria import Measurement, goal_reached, size_reduction_percent, speedup
from agents.planners.base import PlannerView, check_allowed, enforce_instructions
from agents.profile_facts import ProfileFacts, profile_facts
from agents.state import Action, ToolCall, TrialRecord

MAX_FALLBACKS = 2
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
}
_GPU_ONLY = {"weight_only_int4", "bnb_int8", "bnb_nf4"}
_CPU_ONLY = {"dynamic_int8", "static_int8"}


class RulesPlanner:
    name = "rules"

    async def next_action(self, view: PlannerView) -> Action:
        return decide(view)


def decide(view: PlannerView) -> Action:
    facts = profile_facts(view.profile)
    if view.instructions.finish_requested:
        return _finish("The user asked to stop; reporting the best version so far.")
    if goal_reached(view.criteria, view.baseline, view.current):
        action = _fresh(_speed_step(view, facts), view)
        if action is not None:
            return action
        return _finish(
            f"The goal is reached: {size_reduction_percent(view.baseline, view.current):.1f}% smaller "
            f"(target {view.criteria.size_target_percent:.0f}%) with "
            f"{100 * view.current.accuracy_retained:.2f}% of the accuracy retained "
            f"(floor {100 * view.criteria.accuracy_floor:.1f}%), and no faster variant is left to try."
        )
    for step in (_quantization_step, _bit_escalation_step, _pruning_step, _speed_step):
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
        order = [
            (
                "dynamic_int8",
                "ONNX Runtime dynamic int8 quantizes MatMul/Gemm weights 4x smaller with no data",
            ),
            ("static_int8", "static int8 with calibration also quantizes activations"),
            ("fp16", "fp16 halves every initializer"),
        ]
    elif gpu:
        half = "bf16" if preset != "accuracy_first" else "fp16"
        int4 = [
            ("weight_only_int4", "int4 weight-only quarters the weight bytes the GPU must stream per token"),
            ("bnb_nf4", "bitsandbytes nf4 is the 4-bit fallback"),
        ]
        int8 = [
            ("weight_only_int8", "int8 weight-only halves the weight bytes again over 16-bit"),
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
        if view.instructions.prefer_bits == 16 or preset == "accuracy_first":
            order = [half] + [o for o in order if o[0] != "fp16"]
    out = []
    for method, why in order:
        if method not in offered:
            continue
        if gpu and method in _CPU_ONLY and view.runtime != "onnx":
            continue
        if not gpu and method in _GPU_ONLY:
            continue
        if "quantization" not in allowed and not ("half_precision" in allowed and method in ("fp16", "bf16")):
            continue
        if view.instructions.prefer_bits == 8 and _BITS.get(method) == 16 and preset != "accuracy_first":
            continue
        out.append((method, why))
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


def _quant_call(t: TrialRecord) -> ToolCall | None:
    return next((c for c in t.calls if c.tool == "quantize"), None)


def _sensitivity_order(facts: ProfileFacts, skip: list[str]) -> list[str]:
    """Layers most likely to cost accuracy when compressed: output head, input layer, then the smallest."""
    layers = list(facts.quantizable) or list(facts.prunable)
    if not layers:
        return []
    order = [layers[-1]]
    if len(layers) > 1:
        order.append(layers[0])
    order += sorted(layers[1:-1], key=lambda n: facts.layer_params.get(n, 0))
    return [n for n in order if not any(fnmatch.fnmatch(n, p) for p in skip)]


def _prune_sensitivity(facts: ProfileFacts, skip: list[str]) -> list[str]:
    """For pruning: the input layer, then the smallest hidden layers (the output layer is never pruned)."""
    layers = list(facts.prunable) or list(facts.quantizable)
    order = layers[:1] + sorted(layers[1:-1], key=lambda n: facts.layer_params.get(n, 0))
    return [n for n in order if not any(fnmatch.fnmatch(n, p) for p in skip)]


def _quantization_step(view: PlannerView, facts: ProfileFacts) -> Action | None:
    if _is_quantized(view.current_record.recipe):
        return None
    base = view.current_version
    tried = _trials_on(view, base, "quantize")
    for method, why in ranked_quant_methods(view, facts):
        mine = [t for t in tried if (_quant_call(t) or ToolCall(tool="")).arguments.get("method") == method]
        if not mine:
            return Action(
                kind="tool",
                calls=[ToolCall(tool="quantize", arguments={"method": method})],
                reasoning=f"{why}. Trying {method} on {base}.",
                strategy="quantize",
                meta={"method": method},
            )
        last = mine[-1]
        if last.status == "failed" or last.status == "accepted":
            continue  # unavailable here, or accepted then rolled back by the user
        if last.meets is False and len(mine) <= MAX_FALLBACKS:
            excluded = list(last.meta.get("fallback_exclude", []))
            candidates = [n for n in _sensitivity_order(facts, excluded + view.instructions.exclude_quantize)]
            if candidates:
                layer = candidates[0]
                exclude = excluded + [layer]
                return Action(
                    kind="tool",
                    calls=[ToolCall(tool="quantize", arguments={"method": method, "exclude": exclude})],
                    reasoning=(
                        f"{method} cost too much accuracy ({100 * _retained(last):.2f}% retained, floor "
                        f"{100 * view.criteria.accuracy_floor:.1f}%). Per-layer fallback: keeping '{layer}' in "  # noqa: E501
                        "floating point (the layer most likely to be sensitive) and retrying."
                    ),
                    strategy="quantize_fallback",
                    meta={"method": method, "fallback_exclude": exclude},
                )
    return None


def _bit_escalation_step(view: PlannerView, facts: ProfileFacts) -> Action | None:
    """Quantized already but short of the size target: try a lower-bit method on the float base."""
    rec = view.current_record
    if not _is_quantized(rec.recipe):
        return None
    current_method = next(c.arguments.get("method") for c in rec.recipe if c.tool == "quantize")
    current_bits = _BITS.get(str(current_method), 8)
    base = _float_base(view)
    tried_methods = {
        str((_quant_call(t) or ToolCall(tool="")).arguments.get("method"))
        for t in _trials_on(view, base, "quantize")
    }
    for method, why in ranked_quant_methods(view, facts):
        if _BITS.get(method, 16) < current_bits and method not in tried_methods:
            prune_calls = [c for c in rec.recipe if c.tool == "prune"]
            return Action(
                kind="tool",
                calls=[*prune_calls, ToolCall(tool="quantize", arguments={"method": method})],
                base_version=base if not prune_calls else _root_float(view),
                reasoning=(
                    f"{current_method} left the model {size_reduction_percent(view.baseline, view.current):.1f}% "  # noqa: E501
                    f"smaller, short of the {view.criteria.size_target_percent:.0f}% target; {why}."
                ),
                strategy="quantize_lower_bits",
                meta={"method": method},
            )
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
    return Action(
        kind="tool",
        calls=[ToolCall(tool="prune", arguments=args), *requant],
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


def _speed_step(view: PlannerView, facts: ProfileFacts) -> Action | None:
    return _requant_step(view, facts) or _speed_prune_step(view, facts)


def _calls_key(calls: list[ToolCall]) -> str:
    return json.dumps([c.model_dump() for c in calls], sort_keys=True)


def _requant_step(view: PlannerView, facts: ProfileFacts) -> Action | None:
    """The current lineage with a quantization method of no more bits that may run faster here."""
    rec = view.current_record
    quant = [c for c in rec.recipe if c.tool == "quantize"]
    if not quant or view.runtime == "onnx":
        return None
    if sum(t.strategy == "requantize_for_speed" for t in view.trials) >= MAX_REQUANT_TRIALS:
        return None
    current = str(quant[-1].arguments.get("method"))
    prune_calls = [c for c in rec.recipe if c.tool == "prune"]
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
        args: dict[str, Any] = {"method": method}
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
    return Action(
        kind="tool",
        calls=[ToolCall(tool="prune", arguments=args), *requant],
        base_version=_root_float(view),
        reasoning=why,
        strategy="prune_for_speed",
        meta={"method": "structured", "amount": round(amount, 4), "lo": lo, "hi": hi},
    )


# ------------------------------------------------------------------------------------------


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
