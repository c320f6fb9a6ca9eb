"""The results of a session, computed from its graph state (also for partial, cancelled runs)."""

from __future__ import annotations

from typing import Any

from agents.criteria import (
    Criteria,
    Measurement,
    goal_reached,
    improvements,
    meets,
    objective,
    pareto_front,
    size_reduction_percent,
    speedup,
)
from agents.state import BASELINE_VERSION


def build_report(state: dict[str, Any]) -> dict[str, Any]:
    if not state.get("baseline"):
        return {
            "optimization_summary": {
                "status_note": "the session stopped before the original model was measured",
                "trials": len(state.get("trials", [])),
            },
            "performance_improvements": None,
            "trials": state.get("trials", []),
            "pareto_set": [],
            "rejected": [],
            "selected_version": None,
            "recipe": [],
        }
    criteria = Criteria.model_validate(state["criteria"])
    baseline = Measurement.model_validate(state["baseline"])
    versions: dict[str, dict[str, Any]] = state.get("versions", {})
    selected_id = state.get("current_version", BASELINE_VERSION)
    selected = versions[selected_id]
    sel_m = Measurement.model_validate(selected["measurement"])
    trials = state.get("trials", [])
    measured = [
        (vid, Measurement.model_validate(v["measurement"]))
        for vid, v in versions.items()
        if v.get("measurement") is not None
    ]
    # The Pareto set is drawn from the versions that met the criteria (the original always does): a
    # candidate the gate turned down for accuracy is no trade-off on offer. Those are listed apart.
    eligible = [(vid, m) for vid, m in measured if meets(criteria, baseline, m)]
    front = pareto_front(eligible)
    pareto = [
        {
            "version": vid,
            "trial": versions[vid].get("trial"),
            "size_bytes": m.size_bytes,
            "latency_p50_ms": m.latency_p50_ms,
            "accuracy_retained": m.accuracy_retained,
            "meets_criteria": True,
            "objective": objective(criteria, baseline, m),
        }
        for vid, m in eligible
        if vid in front
    ]
    by_version = {t.get("version_id"): t for t in trials if t.get("version_id")}
    missed = [
        {
            "version": vid,
            "trial": versions[vid].get("trial"),
            "size_bytes": m.size_bytes,
            "latency_p50_ms": m.latency_p50_ms,
            "accuracy_retained": m.accuracy_retained,
            "meets_criteria": False,
            "objective": objective(criteria, baseline, m),
            "reason": (by_version.get(vid) or {}).get("decision", ""),
        }
        for vid, m in measured
        if not meets(criteria, baseline, m)
    ]
    accepted = sum(1 for t in trials if t.get("status") == "accepted")
    rejected = sum(1 for t in trials if t.get("status") == "rejected")
    failed = sum(1 for t in trials if t.get("status") == "failed")
    recipe = selected.get("recipe", [])
    summary = {
        "selected_version": selected_id,
        "criteria": criteria.model_dump(mode="json"),
        "criteria_met": meets(criteria, baseline, sel_m),
        "goal_reached": goal_reached(criteria, baseline, sel_m),
        "improved": selected_id != BASELINE_VERSION,
        "size_reduction_percent": round(size_reduction_percent(baseline, sel_m), 2),
        "latency_speedup": round(speedup(baseline, sel_m), 3),
        "accuracy_retained": round(sel_m.accuracy_retained, 5),
        "accuracy_metric": sel_m.accuracy_metric or baseline.accuracy_metric,
        "metric_reason": sel_m.metric_reason or baseline.metric_reason,
        "accuracy_output": sel_m.accuracy_output or baseline.accuracy_output,
        "trials_total": len(trials),
        "trials_accepted": accepted,
        "trials_rejected": rejected,
        "trials_failed": failed,
        "finish_reason": state.get("finish_reason", ""),
        "device": state.get("device"),
        "techniques_used": sorted({t for c in recipe for t in _techniques(c)}),
        "recovery": _recovery_totals(trials),
        "text": _summary_text(
            criteria, baseline, sel_m, selected_id, len(trials), state.get("finish_reason", "")
        ),
    }
    return {
        "optimization_summary": summary,
        "performance_improvements": improvements(baseline, sel_m),
        "baseline": baseline.model_dump(),
        "selected": sel_m.model_dump(),
        "trials": trials,
        "pareto_set": pareto,
        "rejected": missed,
        "selected_version": {
            "version": selected_id,
            "trial": selected.get("trial"),
            "artifact_format": selected.get("artifact_format"),
            "measurement": sel_m.model_dump(),
        },
        "recipe": recipe,
        "accepted_chain": state.get("accepted_chain", [BASELINE_VERSION]),
    }


def _techniques(call: dict[str, Any]) -> list[str]:
    arguments = call.get("arguments") or {}
    if call.get("tool") == "prune":
        return ["pruning"]
    if call.get("tool") == "distill":
        return ["distillation"]
    if call.get("tool") == "compile_model":
        return ["compilation"]
    method = arguments.get("method")
    if method in ("fp16", "bf16"):
        return ["half_precision"]
    if arguments.get("recovery") == "qat":
        return ["quantization", "quantization_aware_training"]
    return ["quantization"]


def _recovery_totals(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """What recovery (distillation, quantization-aware training) cost over the session, and where."""
    recovered = [t for t in trials if (t.get("tool_metrics") or {}).get("recovery")]
    return {
        "trials": [t.get("number") for t in recovered],
        "seconds": round(
            sum(float(t["tool_metrics"]["recovery"].get("seconds") or 0.0) for t in recovered), 3
        ),
        "steps": sum(int(t["tool_metrics"]["recovery"].get("steps") or 0) for t in recovered),
        "accepted": [t.get("number") for t in recovered if t.get("status") == "accepted"],
    }


def _summary_text(
    criteria: Criteria, baseline: Measurement, sel: Measurement, selected: str, trials: int, reason: str
) -> str:
    if selected == BASELINE_VERSION:
        return (
            f"No candidate beat the original within the criteria after {trials} trial(s) ({reason}). "
            "The original model is kept."
        )
    return (
        f"Selected {selected}: {size_reduction_percent(baseline, sel):.1f}% smaller "
        f"({baseline.size_bytes} -> {sel.size_bytes} bytes), {speedup(baseline, sel):.2f}x latency "
        f"({baseline.latency_p50_ms:.3f} -> {sel.latency_p50_ms:.3f} ms p50), "
        f"{100 * sel.accuracy_retained:.2f}% accuracy retained{_metric_note(sel)} "
        f"(floor {100 * criteria.accuracy_floor:.1f}%), "
        f"after {trials} trial(s). Stopped because: {reason}"
    )


def _metric_note(m: Measurement) -> str:
    if not m.accuracy_metric:
        return ""
    where = f" of output '{m.accuracy_output}'" if m.accuracy_output and m.accuracy_output != "output" else ""
    return f" by {m.accuracy_metric}{where}"
