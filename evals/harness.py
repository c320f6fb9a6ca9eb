"""Runs a suite: each case through the agent, the fixed recipes and the oracle grid, then scores all
of them in one final measurement pass and writes the report.

The search phase measures the way the agent's graph does (criteria's benchmark settings). The final
pass re-measures the original and every method's selected model with more iterations, interleaved
round-robin so that slow phases of a shared CPU hit every method alike, and drives each model in
closed loop on its task. Scores, verdicts and the table all come from that final pass.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.criteria import Criteria, Measurement, meets, objective, size_reduction_percent, speedup
from evals.cases import EvalCase, cases_for
from evals.methods import BASELINES, Candidate, measure, run_agent, run_oracle, run_recipe
from evals.reference import ensure_reference, load_reference, reference_meta, suite_seeds, task_success
from evals.report import CaseVerdict, ResultRow, plot, render_markdown, write_results

log = logging.getLogger("evals")

# The agent's session budget per suite (unless a case sets its own): what its recovery training may take
# is a share of it (agents.planners.rules.recovery_seconds), so the smoke suite stays within its minutes.
SUITE_TIME_BUDGET_S: dict[str, float] = {"tiny": 60.0, "smoke": 160.0, "full": 900.0}
FINAL_ITERATIONS = 100
FINAL_WARMUP = 10
FINAL_ROUNDS = 3
# Differences below these are measurement noise when checking dominance.
LATENCY_NOISE = 0.05
SIZE_NOISE = 0.005
ACCURACY_NOISE = 0.001


@dataclass
class PlannerSetup:
    name: str  # "rules" | "llm" | "recorded"
    record_dir: Path | None = None
    recordings_dir: Path | None = None
    provenance: str | None = None  # what the recording says about where its replies came from


@dataclass
class CaseResult:
    case: EvalCase
    rows: list[ResultRow]
    verdict: CaseVerdict | None
    grid: list[dict[str, Any]]
    original: Measurement
    search_original: Measurement
    agent_trials: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _llm_for(setup: PlannerSetup, case: str) -> tuple[Any, Any, str | None]:
    """(planner argument, llm client, note) for optimize_local."""
    if setup.name == "rules":
        return "rules", None, None
    from evals.llm_replay import RecordingLLMClient, ReplayLLMClient

    if setup.name == "recorded":
        assert setup.recordings_dir is not None
        path = setup.recordings_dir / f"{case}.jsonl"
        if not path.exists():
            return None, None, f"no recording at {path}: case skipped for the recorded planner"
        client = ReplayLLMClient(path)
        return "llm", client, f"replayed {path.name} ({client.provenance})"
    from agents.llm import LLMClient
    from state.settings import get_settings

    client = LLMClient.from_settings(get_settings())
    if client is None:
        raise SystemExit("--planner llm needs LLM_MODEL (and LLM_API_BASE / LLM_API_KEY) configured")
    if setup.record_dir is not None:
        setup.record_dir.mkdir(parents=True, exist_ok=True)
        client = RecordingLLMClient(
            client, setup.record_dir / f"{case}.jsonl", case=case, provenance=setup.provenance
        )
    return "llm", client, None


def final_measurements(handles: list[Any], original: Any, criteria: Criteria) -> list[Measurement]:
    """Measure all handles (the original first) round-robin; latency = median of the rounds' p50."""
    first: list[Measurement] = []
    p50s: list[list[float]] = [[] for _ in handles]
    for r in range(FINAL_ROUNDS):
        for i, h in enumerate(handles):
            if r == 0:
                m = measure(h, original, criteria, iterations=FINAL_ITERATIONS, warmup=FINAL_WARMUP)
                first.append(m)
                p50s[i].append(m.latency_p50_ms)
            else:
                from tools.benchmarking import benchmark

                b = benchmark(
                    h,
                    device=criteria.resolved_device(),
                    batch_size=1,
                    warmup=FINAL_WARMUP,
                    iterations=FINAL_ITERATIONS,
                )
                p50s[i].append(float(b.p50_ms))
    return [
        m.model_copy(update={"latency_p50_ms": statistics.median(p)})
        for m, p in zip(first, p50s, strict=True)
    ]


def dominates(b: Measurement, a: Measurement) -> bool:
    """b is at least as good as a on size, latency and accuracy, and better on one (beyond noise)."""
    no_worse = (
        b.size_bytes <= a.size_bytes * (1 + SIZE_NOISE)
        and b.latency_p50_ms <= a.latency_p50_ms * (1 + LATENCY_NOISE)
        and b.accuracy_retained >= a.accuracy_retained - ACCURACY_NOISE
    )
    better = (
        b.size_bytes < a.size_bytes * (1 - SIZE_NOISE)
        or b.latency_p50_ms < a.latency_p50_ms / (1 + LATENCY_NOISE)
        or b.accuracy_retained > a.accuracy_retained + ACCURACY_NOISE
    )
    return no_worse and better


def run_case(case: EvalCase, suite: str, setup: PlannerSetup, data_dir: Path) -> CaseResult:
    notes: list[str] = []
    criteria = Criteria.model_validate({"time_budget_s": SUITE_TIME_BUDGET_S.get(suite), **case.criteria})
    original = load_reference(case.reference, data_dir)
    meta = reference_meta(case.reference, data_dir)
    search_base = measure(original, original, criteria)
    seeds = suite_seeds(case.task, suite)

    candidates: list[Candidate] = []
    planner, llm, note = _llm_for(setup, case.case)
    if note:
        notes.append(note)
    if planner is not None:
        log.info("[%s] agent (%s planner)", case.case, setup.name)
        agent = run_agent(
            original, criteria, search_base, planner=planner, llm=llm, label=f"agent[{setup.name}]"
        )
        candidates.append(agent)
        fallbacks = sum(1 for t in agent.grid if t.get("source") == "rules_fallback")
        if fallbacks:
            notes.append(f"{fallbacks} of the agent's steps fell back to the rules planner")
    for name, recipe in BASELINES.items():
        log.info("[%s] %s", case.case, name)
        candidates.append(run_recipe(name, recipe, original, criteria, search_base))
    log.info("[%s] oracle grid", case.case)
    oracle = run_oracle(original, criteria, search_base, suite=suite)
    candidates.append(oracle)

    runnable = [c for c in candidates if c.handle is not None]
    measured = final_measurements([original] + [c.handle for c in runnable], original, criteria)
    base, finals = measured[0], dict(zip((id(c) for c in runnable), measured[1:], strict=True))
    original_success = task_success(original, case.task, seeds)
    notes.append(
        f"original: task success {original_success['success_rate']:.3f}"
        + (
            f", mean return {original_success['mean_return']:.2f}"
            if "mean_return" in original_success
            else ""
        )
        + f", {base.accuracy_metric} {base.accuracy_value}, p50 {base.latency_p50_ms:.4f} ms, "
        f"{base.size_bytes} bytes; built in {meta.get('build_seconds')} s (closed-loop at build: "
        f"{meta.get('closed_loop')})"
    )

    rows: list[ResultRow] = []
    final_by_method: dict[str, Measurement] = {}
    for c in candidates:
        if c.handle is None:
            rows.append(
                ResultRow(
                    case=case.case,
                    method=c.method,
                    criteria_met=None,
                    score=None,
                    size_reduction_percent=None,
                    latency_speedup=None,
                    accuracy_retained=None,
                    task_success=None,
                    task_success_retained=None,
                    trials=c.trials,
                    wall_s=round(c.wall_s, 2),
                )
            )
            notes.append(f"{c.method}: {c.note}")
            continue
        m = finals[id(c)]
        final_by_method[c.method] = m
        ts = task_success(c.handle, case.task, seeds)
        rows.append(
            ResultRow(
                case=case.case,
                method=c.method,
                criteria_met=meets(criteria, base, m),
                score=objective(criteria, base, m),
                size_reduction_percent=round(size_reduction_percent(base, m), 2),
                latency_speedup=round(speedup(base, m), 3),
                accuracy_retained=round(m.accuracy_retained, 5),
                task_success=round(ts["success_rate"], 4),
                task_success_retained=_retained(ts["success_rate"], original_success["success_rate"]),
                trials=c.trials,
                wall_s=round(c.wall_s, 2),
            )
        )
        if c.method.startswith("agent") and original_success["success_rate"] > 0:
            kept = ts["success_rate"] / original_success["success_rate"]
            if kept < criteria.accuracy_floor:
                notes.append(
                    f"{c.method}: closed-loop task success {ts['success_rate']:.3f} is {kept:.1%} of the "
                    f"original's, below the {criteria.accuracy_floor:.0%} floor the offline metric enforced"
                )
    verdict = _verdict(case.case, rows, final_by_method)
    agent_trials = next((c.grid for c in candidates if c.method.startswith("agent")), [])
    return CaseResult(case, rows, verdict, oracle.grid, base, search_base, agent_trials, notes)


def _retained(success: float, original: float) -> float | None:
    """Closed-loop success (or test accuracy) kept, as a fraction of the original's; None when it has none."""
    return round(success / original, 4) if original > 0 else None


def _verdict(case: str, rows: list[ResultRow], finals: dict[str, Measurement]) -> CaseVerdict | None:
    agent = next((r for r in rows if r.method.startswith("agent")), None)
    oracle = next((r for r in rows if r.method.startswith("oracle")), None)
    if agent is None:
        return None
    a = finals.get(agent.method)
    dominated_by = [
        r.method
        for r in rows
        if r.method.startswith("baseline")
        and r.criteria_met
        and a is not None
        and dominates(finals[r.method], a)
    ]
    score_ratio = None
    if oracle is not None and oracle.score is not None and agent.score is not None:
        score_ratio = (
            agent.score / oracle.score if oracle.score > 0 else (1.0 if agent.score >= oracle.score else 0.0)
        )
    trial_ratio = agent.trials / oracle.trials if oracle is not None and oracle.trials else None
    return CaseVerdict(
        case=case,
        agent_meets=bool(agent.criteria_met),
        dominated_by=dominated_by,
        score_ratio=round(score_ratio, 4) if score_ratio is not None else None,
        within_5pct=score_ratio is not None and score_ratio >= 0.95,
        trial_ratio=round(trial_ratio, 4) if trial_ratio is not None else None,
        quarter_trials=trial_ratio is not None and trial_ratio <= 0.25,
    )


def run_suite(
    suite: str,
    setup: PlannerSetup,
    out: Path,
    data_dir: Path,
    *,
    only: list[str] | None = None,
) -> list[CaseResult]:
    import torch

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    cases = cases_for(suite, only)
    build_times = {}
    for case in cases:
        t = time.perf_counter()
        ensure_reference(case.reference, data_dir)
        build_times[case.reference] = round(time.perf_counter() - t, 1)
    results = [run_case(case, suite, setup, data_dir) for case in cases]
    rows = [r for res in results for r in res.rows]
    verdicts = [res.verdict for res in results if res.verdict is not None]
    from tools.benchmarking import _device_name

    context = {
        "suite": suite,
        "planner": setup.name,
        "device_name": _device_name("cpu"),
        "torch_threads": torch.get_num_threads(),
        "reference build/load seconds": build_times,
        "total seconds": round(time.perf_counter() - start, 1),
        "data_dir": str(data_dir),
    }
    write_results(out, rows)
    grids = {res.case.case: res.grid for res in results}
    bases = {
        res.case.case: {"size_bytes": res.original.size_bytes, "latency_p50_ms": res.original.latency_p50_ms}
        for res in results
    }
    plot(out, rows, grids, bases)
    (out / "grid.json").write_text(json.dumps(grids, indent=1))
    trials = {res.case.case: res.agent_trials for res in results}
    (out / "agent_trials.json").write_text(json.dumps(trials, indent=1, default=str))
    (out / "report.md").write_text(
        render_markdown(
            rows,
            verdicts,
            suite=suite,
            planner=setup.name,
            notes={res.case.case: res.notes for res in results},
            context=context,
        )
    )
    return results
