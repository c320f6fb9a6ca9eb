"""What the harness compares on each case: the agent, fixed recipes, and the exhaustive grid (oracle).

Every candidate is produced with the same tools the agent calls (`tools.quantization`, `tools.pruning`)
and measured the way the agent's graph measures (`benchmark` at batch 1 with the criteria's warm-up
and iteration counts, `evaluate` against the original), so the scores compare like with like.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.criteria import Criteria, Measurement, meets, objective
from tools.errors import ToolError
from tools.handle import ModelHandle

log = logging.getLogger("evals.methods")

Step = dict[str, Any]  # {"tool": "quantize"|"prune", **arguments}


@dataclass
class Candidate:
    """One optimized version: how it was made, its handle, and what the search measured."""

    method: str
    recipe: list[Step]
    handle: ModelHandle | None
    measurement: Measurement | None = None
    score: float | None = None
    criteria_met: bool | None = None
    trials: int = 1
    wall_s: float = 0.0
    note: str | None = None  # why it could not run (GPU-only method on a CPU, a tool refusing)
    grid: list[dict[str, Any]] = field(default_factory=list)  # oracle: every point it measured


def measure(
    handle: ModelHandle,
    original: ModelHandle,
    criteria: Criteria,
    *,
    iterations: int | None = None,
    warmup: int | None = None,
) -> Measurement:
    """The agent graph's measurement (agents.graph.measure), optionally with more iterations."""
    from tools.benchmarking import benchmark
    from tools.evaluation import evaluate

    bench = benchmark(
        handle,
        device=criteria.resolved_device(),
        batch_size=1,
        warmup=criteria.benchmark_warmup if warmup is None else warmup,
        iterations=criteria.benchmark_iterations if iterations is None else iterations,
    )
    ev = evaluate(handle, reference=original)
    return Measurement(
        size_bytes=int(bench.size_bytes),
        latency_p50_ms=float(bench.p50_ms),
        latency_p90_ms=float(bench.p90_ms),
        peak_memory_mb=float(bench.peak_memory_mb or 0.0),
        throughput_per_s=float(bench.throughput_per_s),
        accuracy_retained=float(ev.accuracy_retained),
        accuracy_metric=str(ev.metric),
        accuracy_value=float(ev.value) if ev.value is not None else None,
        uses_targets=bool(ev.uses_targets),
    )


def apply_recipe(handle: ModelHandle, recipe: list[Step], device: str) -> ModelHandle:
    from tools.pruning import prune
    from tools.quantization import quantize

    out = handle
    for step in recipe:
        args = {k: v for k, v in step.items() if k != "tool"}
        if step["tool"] == "quantize":
            out = quantize(out, args.pop("method"), **args)
        elif step["tool"] == "prune":
            out = prune(out, args.pop("method"), args.pop("amount"), **args)
        else:
            raise ValueError(f"unknown step {step}")
    return out


def recipe_label(recipe: list[Step]) -> str:
    parts = []
    for s in recipe:
        if s["tool"] == "prune":
            parts.append(f"{s['method']}{int(round(100 * s['amount']))}")
        else:
            parts.append(str(s["method"]))
    return "+".join(parts) or "original"


# ------------------------------------------------------------------------------------------------
# fixed recipes: what a user applies by hand
# ------------------------------------------------------------------------------------------------

BASELINES: dict[str, list[Step]] = {
    "baseline:dynamic_int8": [{"tool": "quantize", "method": "dynamic_int8"}],
    "baseline:bnb_nf4": [{"tool": "quantize", "method": "bnb_nf4"}],
    "baseline:magnitude50": [{"tool": "prune", "method": "magnitude", "amount": 0.5}],
    "baseline:fp16": [{"tool": "quantize", "method": "fp16"}],
}


def run_recipe(
    name: str, recipe: list[Step], original: ModelHandle, criteria: Criteria, baseline: Measurement
) -> Candidate:
    start = time.perf_counter()
    device = criteria.resolved_device()
    try:
        handle = apply_recipe(original, recipe, device)
    except ToolError as err:
        reason = err.message if hasattr(err, "message") else str(err)
        if device == "cpu" and getattr(err, "code", "") in ("unsupported_device", "dependency_missing"):
            reason = f"not runnable on CPU ({reason})"
        return Candidate(name, recipe, None, note=reason, trials=0, wall_s=time.perf_counter() - start)
    m = measure(handle, original, criteria)
    return Candidate(
        name,
        recipe,
        handle,
        measurement=m,
        score=objective(criteria, baseline, m),
        criteria_met=meets(criteria, baseline, m),
        trials=1,
        wall_s=time.perf_counter() - start,
    )


# ------------------------------------------------------------------------------------------------
# the oracle: every combination of pruning (method x amount) and quantization the tools offer
# ------------------------------------------------------------------------------------------------

PRUNE_GRID: list[Step | None] = [
    None,
    {"tool": "prune", "method": "magnitude", "amount": 0.25},
    {"tool": "prune", "method": "magnitude", "amount": 0.5},
    {"tool": "prune", "method": "magnitude", "amount": 0.75},
    {"tool": "prune", "method": "structured", "amount": 0.25},
    {"tool": "prune", "method": "structured", "amount": 0.5},
]
QUANT_GRID: list[str | None] = [None, "dynamic_int8", "weight_only_int8", "static_int8", "fp16", "bf16"]
HALF_PRECISION = ("fp16", "bf16")


def oracle_recipes(criteria: Criteria) -> list[list[Step]]:
    """Grid points the criteria allow: pruning first (it needs float weights), then quantization."""
    allowed = set(criteria.optimization_techniques)
    out = []
    for p in PRUNE_GRID:
        if p is not None and "pruning" not in allowed:
            continue
        for q in QUANT_GRID:
            if q is not None:
                if q in HALF_PRECISION and not ({"quantization", "half_precision"} & allowed):
                    continue
                if q not in HALF_PRECISION and "quantization" not in allowed:
                    continue
            recipe = ([p] if p else []) + ([{"tool": "quantize", "method": q}] if q else [])
            if recipe:
                out.append(recipe)
    return out


def run_oracle(
    original: ModelHandle,
    criteria: Criteria,
    baseline: Measurement,
    *,
    on_point: Callable[[dict[str, Any]], None] | None = None,
) -> Candidate:
    """Measure every grid point; the oracle is the best score among those that meet the criteria."""
    start = time.perf_counter()
    device = criteria.resolved_device()
    best: Candidate | None = None
    grid: list[dict[str, Any]] = []
    trials = 0
    for recipe in oracle_recipes(criteria):
        label = recipe_label(recipe)
        try:
            handle = apply_recipe(original, recipe, device)
        except ToolError as err:
            grid.append({"recipe": label, "error": str(getattr(err, "message", err))[:200]})
            continue
        trials += 1
        m = measure(handle, original, criteria)
        score = objective(criteria, baseline, m)
        ok = meets(criteria, baseline, m)
        point = {
            "recipe": label,
            "score": score,
            "criteria_met": ok,
            "size_bytes": m.size_bytes,
            "latency_p50_ms": m.latency_p50_ms,
            "accuracy_retained": m.accuracy_retained,
        }
        grid.append(point)
        if on_point:
            on_point(point)
        if ok and (best is None or (best.score is not None and score > best.score)):
            best = Candidate("oracle", recipe, handle, measurement=m, score=score, criteria_met=ok)
        else:
            del handle
    wall = time.perf_counter() - start
    if best is None:
        return Candidate(
            "oracle", [], None, note="no grid point meets the criteria", trials=trials, wall_s=wall, grid=grid
        )
    best.method = f"oracle:{recipe_label(best.recipe)}"
    best.trials = trials
    best.wall_s = wall
    best.grid = grid
    return best


# ------------------------------------------------------------------------------------------------
# the agent
# ------------------------------------------------------------------------------------------------


def run_agent(
    original: ModelHandle,
    criteria: Criteria,
    baseline: Measurement,
    *,
    planner: Any,
    llm: Any = None,
    label: str = "agent",
) -> Candidate:
    from agents.local import optimize_local

    start = time.perf_counter()
    outcome = optimize_local(original, criteria, planner=planner, llm=llm)
    wall = time.perf_counter() - start
    recipe = [{"tool": c.tool, **c.arguments} for c in outcome.recipe]
    m = outcome.selected_measurement
    cand = Candidate(
        f"{label}:{_agent_recipe_label(recipe)}",
        recipe,
        outcome.selected,
        measurement=m,
        score=objective(criteria, baseline, m),
        criteria_met=meets(criteria, baseline, m),
        trials=outcome.num_trials,
        wall_s=wall,
    )
    cand.grid = [
        {
            "trial": t.number,
            "calls": [c.model_dump() for c in t.calls],
            "status": t.status,
            "source": t.source,
            "objective": t.objective,
            "meets": t.meets,
            "decision": t.decision,
            "error": t.error,
            "size_bytes": (t.measurement or {}).get("size_bytes"),
            "latency_p50_ms": (t.measurement or {}).get("latency_p50_ms"),
            "accuracy_retained": (t.measurement or {}).get("accuracy_retained"),
        }
        for t in outcome.trials
    ]
    return cand


def _agent_recipe_label(recipe: list[Step]) -> str:
    parts = []
    for s in recipe:
        if s["tool"] == "prune":
            extra = "" if s.get("scope", "global") == "global" else f"/{s['scope']}"
            parts.append(f"{s.get('method')}{int(round(100 * float(s.get('amount', 0))))}{extra}")
        else:
            parts.append(str(s.get("method")))
        if s.get("include") or s.get("exclude"):
            parts[-1] += "(partial)"
    return "+".join(parts) or "original"
