"""The harness's outputs: results.json (one row per case and method), report.md (the table) and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ROW_FIELDS = (
    "case",
    "method",
    "criteria_met",
    "score",
    "size_reduction_percent",
    "latency_speedup",
    "accuracy_retained",
    "task_success",
    "task_success_retained",
    "trials",
    "wall_s",
)


class ResultRow(BaseModel):
    case: str
    method: str  # "agent...", "baseline:...", "oracle..."
    criteria_met: bool | None
    score: float | None
    size_reduction_percent: float | None
    latency_speedup: float | None
    accuracy_retained: float | None
    task_success: float | None  # closed-loop success rate (policies) or test accuracy (digits)
    task_success_retained: float | None = None  # task_success / the original's (None when it has none)
    trials: int
    wall_s: float


class CaseVerdict(BaseModel):
    """The issue's acceptance checks for one case (agent with the planner of this run)."""

    case: str
    agent_meets: bool
    dominated_by: list[str]
    score_ratio: float | None  # agent score / oracle score
    within_5pct: bool
    trial_ratio: float | None  # agent trials / oracle trials
    quarter_trials: bool

    @property
    def passed(self) -> bool:
        return self.agent_meets and not self.dominated_by and self.within_5pct and self.quarter_trials


def write_results(out: Path, rows: list[ResultRow]) -> Path:
    path = out / "results.json"
    payload = {"cases": [{k: getattr(r, k) for k in ROW_FIELDS} for r in rows]}
    path.write_text(json.dumps(payload, indent=2))
    return path


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return format(value, spec)
    return str(value)


def render_markdown(
    rows: list[ResultRow],
    verdicts: list[CaseVerdict],
    *,
    suite: str,
    planner: str,
    notes: dict[str, list[str]],
    context: dict[str, Any],
) -> str:
    lines = [
        f"# robopt eval report: suite `{suite}`, planner `{planner}`",
        "",
        "score = `agents.criteria.objective(criteria, original, candidate)` for every method; "
        "task_success = closed-loop success rate of the optimized model driving its task "
        "(test accuracy for digits-cnn). Latency: p50 at batch 1 on "
        f"{context.get('device_name', 'this machine')}.",
        "",
        "| case | method | criteria met | score | size -% | speedup | acc. retained | task success "
        "| success kept | trials | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.method} | {_fmt(r.criteria_met)} | {_fmt(r.score)} | "
            f"{_fmt(r.size_reduction_percent, '.1f')} | {_fmt(r.latency_speedup, '.2f')} | "
            f"{_fmt(r.accuracy_retained, '.4f')} | {_fmt(r.task_success, '.3f')} | "
            f"{_fmt(r.task_success_retained, '.3f')} | {r.trials} | {_fmt(r.wall_s, '.1f')} |"
        )
    lines += [
        "",
        "## Acceptance (issue 5)",
        "",
        "Agent meets its criteria; no fixed recipe that also meets them dominates it (at least as good on "
        "size, latency and accuracy, better on one, beyond measurement noise: 5% latency, 0.5% size, "
        "0.001 accuracy); agent score >= 95% of the oracle's; agent trials <= 1/4 of the oracle's.",
        "",
        "| case | agent meets | dominated by | score / oracle | trials / oracle | pass |",
        "|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        lines.append(
            f"| {v.case} | {_fmt(v.agent_meets)} | {', '.join(v.dominated_by) or 'none'} | "
            f"{_fmt(v.score_ratio, '.3f')} | {_fmt(v.trial_ratio, '.3f')} | {_fmt(v.passed)} |"
        )
    lines += [
        "",
        "## Small-policy target (issue 11)",
        "",
        f"The agent's pick at least {TARGET_SPEEDUP:g}x faster (p50, batch 1), at least "
        f"{TARGET_SMALLER:g}x smaller on disk, keeping at least {TARGET_KEPT:.0%} of the original's task "
        "success (closed-loop success over the suite's seeds; test accuracy for digits-cnn). A miss says by "
        "how much.",
        "",
        "| case | speedup | x smaller | success kept | pass |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if not r.method.startswith("agent"):
            continue
        checks = target_checks(r)
        lines.append(
            f"| {r.case} | {checks['speedup']} | {checks['smaller']} | {checks['kept']} | "
            f"{_fmt(checks['pass'])} |"
        )
    if any(notes.values()):
        lines += ["", "## Notes", ""]
        for case, items in notes.items():
            for item in items:
                lines.append(f"- {case}: {item}")
    if context:
        lines += ["", "## Run", ""]
        for k, v in context.items():
            lines.append(f"- {k}: {v}")
    return "\n".join(lines) + "\n"


TARGET_SPEEDUP = 2.0
TARGET_SMALLER = 4.0
TARGET_KEPT = 0.99


def target_checks(row: ResultRow) -> dict[str, Any]:
    """The small-policy target's three checks on one row, each as text with the miss's size."""

    def check(value: float | None, goal: float, fmt: str) -> tuple[str, bool]:
        if value is None:
            return "-", False
        ok = value >= goal - 1e-9
        text = format(value, fmt)
        return (text if ok else f"{text} (misses by {format(goal - value, fmt)})"), ok

    smaller = None
    if row.size_reduction_percent is not None and row.size_reduction_percent < 100:
        smaller = 1.0 / max(1e-9, 1.0 - row.size_reduction_percent / 100.0)
    speed, a = check(row.latency_speedup, TARGET_SPEEDUP, ".2f")
    size, b = check(smaller, TARGET_SMALLER, ".2f")
    kept, c = check(row.task_success_retained, TARGET_KEPT, ".3f")
    return {"speedup": speed, "smaller": size, "kept": kept, "pass": a and b and c}


def plot(
    out: Path,
    rows: list[ResultRow],
    grids: dict[str, list[dict[str, Any]]],
    baselines: dict[str, dict[str, float]],
) -> list[Path]:
    """accuracy_vs_size.png, accuracy_vs_latency.png, pareto.png: a panel per case, a marker per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r.case for r in rows))
    markers = {"agent": ("*", "tab:red", 220), "oracle": ("D", "tab:green", 90)}
    baseline_markers = ["o", "s", "^", "v", "P", "X"]
    written: list[Path] = []

    def method_style(method: str, idx: int) -> tuple[str, str, int]:
        kind = method.split(":")[0].split("[")[0]
        if kind in markers:
            return markers[kind]
        return baseline_markers[idx % len(baseline_markers)], f"C{idx % 10}", 70

    def panels(title: str) -> tuple[Any, list[Any]]:
        n = max(1, len(cases))
        fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), squeeze=False)
        fig.suptitle(title)
        return fig, list(axes[0])

    for fname, xkey, xlabel in (
        ("accuracy_vs_size.png", "size_reduction_percent", "size reduction (%)"),
        ("accuracy_vs_latency.png", "latency_speedup", "latency speedup (x, p50 batch 1)"),
    ):
        fig, axes = panels(f"accuracy retained vs {xlabel}")
        for ax, case in zip(axes, cases, strict=False):
            base = baselines.get(case, {})
            pts = [p for p in grids.get(case, []) if "score" in p]
            if pts and base:
                xs = [_grid_x(p, xkey, base) for p in pts]
                ax.scatter(xs, [p["accuracy_retained"] for p in pts], s=14, c="lightgray", label="grid point")
            for i, r in enumerate(x for x in rows if x.case == case):
                x = getattr(r, xkey)
                if x is None or r.accuracy_retained is None:
                    continue
                m, c, s = method_style(r.method, i)
                ax.scatter([x], [r.accuracy_retained], marker=m, c=c, s=s, label=r.method, edgecolors="black")
            ax.set_title(case)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("accuracy retained")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, loc="lower left")
        fig.tight_layout()
        path = out / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, axes = panels("Pareto front of the grid (size reduction vs speedup, points meeting the criteria)")
    for ax, case in zip(axes, cases, strict=False):
        base = baselines.get(case, {})
        pts = [p for p in grids.get(case, []) if "score" in p and p.get("criteria_met")]
        if pts and base:
            xy = [
                (_grid_x(p, "size_reduction_percent", base), _grid_x(p, "latency_speedup", base)) for p in pts
            ]
            ax.scatter([a for a, _ in xy], [b for _, b in xy], s=14, c="lightgray", label="grid (meets)")
            front = sorted(
                (a, b) for a, b in xy if not any(a2 >= a and b2 >= b and (a2 > a or b2 > b) for a2, b2 in xy)
            )
            if front:
                ax.plot(
                    [a for a, _ in front],
                    [b for _, b in front],
                    "-",
                    c="tab:green",
                    lw=1,
                    label="Pareto front",
                )
        for i, r in enumerate(x for x in rows if x.case == case):
            if r.size_reduction_percent is None or r.latency_speedup is None:
                continue
            m, c, s = method_style(r.method, i)
            ax.scatter(
                [r.size_reduction_percent],
                [r.latency_speedup],
                marker=m,
                c=c,
                s=s,
                label=r.method,
                edgecolors="black",
            )
        ax.set_title(case)
        ax.set_xlabel("size reduction (%)")
        ax.set_ylabel("latency speedup (x)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path = out / "pareto.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def _grid_x(point: dict[str, Any], key: str, base: dict[str, float]) -> float:
    if key == "size_reduction_percent":
        return 100.0 * (1.0 - point["size_bytes"] / max(base["size_bytes"], 1))
    return base["latency_p50_ms"] / max(point["latency_p50_ms"], 1e-9)
