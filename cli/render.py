"""What the client prints: tables of models, sessions and results, and one line per agent event.

Every value from the server is printed as text (rich `Text`, never markup), so a model named
`[red]x[/red]` prints as typed.
"""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

TERMINAL = ("completed", "failed", "cancelled")
DECISION_STYLES = {"accepted": "green", "rejected": "yellow", "failed": "red"}
STATUS_STYLES = {
    "completed": "green",
    "running": "cyan",
    "queued": "cyan",
    "failed": "red",
    "cancelled": "yellow",
}


def t(value: Any, style: str = "") -> Text:
    return Text("–" if value is None else str(value), style=style)


def fmt_bytes(n: Any) -> str:
    if n is None:
        return "–"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} TB"


def fmt_ms(ms: Any) -> str:
    return "–" if ms is None else f"{float(ms):.3g} ms"


def fmt_pct(ratio: Any, digits: int = 2) -> str:
    return "–" if ratio is None else f"{100 * float(ratio):.{digits}f}%"


def fmt_call(call: dict[str, Any]) -> str:
    args = ", ".join(
        f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}"
        for k, v in (call.get("arguments") or {}).items()
        if v is not None
    )
    return f"{call.get('tool')}({args})"


def fmt_shape(shape: Any) -> str:
    if not isinstance(shape, list):
        return str(shape)
    return "[" + ", ".join("dynamic" if d is None else str(d) for d in shape) + "]"


def status_text(status: str | None) -> Text:
    return t(status, STATUS_STYLES.get(status or "", ""))


# ---- models


def models_table(items: list[dict[str, Any]], total: int) -> Table:
    # Parameters and the rest are in `robopt models show ID`; full ids, for the other commands.
    table = Table(title=f"Models ({total})", title_justify="left", box=box.SIMPLE_HEAD, expand=True)
    table.add_column("ID", no_wrap=True)
    table.add_column("Name", overflow="fold", ratio=1)
    for column in ("Format", "Size", "Uploaded"):
        table.add_column(column, no_wrap=True)
    for m in items:
        table.add_row(
            t(m["id"]),
            t(m["name"], "bold"),
            t(m["format"]),
            t(fmt_bytes(m["size_bytes"])),
            t(str(m["created_at"])[5:16].replace("T", " ")),
        )
    return table


def model_details(m: dict[str, Any]) -> Group:
    details = m.get("format_details") or {}
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    rows = [
        ("ID", m["id"]),
        ("Name", m["name"]),
        ("Description", m.get("description")),
        ("Format", f"{m['format']} ({m['extension']})"),
        ("File", m.get("original_filename")),
        ("Size", f"{fmt_bytes(m['size_bytes'])} ({m['size_bytes']:,} bytes)"),
        (
            "Parameters",
            f"{details['parameter_count']:,}" if details.get("parameter_count") is not None else None,
        ),
        ("SHA-256", m.get("sha256")),
        ("Architecture", json.dumps(m["architecture"]) if m.get("architecture") else None),
        ("Uploaded", m.get("created_at")),
        ("Optimized from", m.get("parent_model_id")),
        ("By session", m.get("source_session_id")),
    ]
    for key, value in rows:
        if value not in (None, ""):
            facts.add_row(t(key), t(value))
    signature = Table(title="Input signature", title_justify="left")
    for column in ("Input", "Shape", "Type"):
        signature.add_column(column)
    for spec in m.get("input_spec") or []:
        signature.add_row(t(spec["name"]), t(fmt_shape(spec["shape"])), t(spec["dtype"]))
    parts: list[Any] = [facts, signature]
    if not m.get("input_spec"):
        missing = "; ".join((details.get("signature") or {}).get("missing") or [])
        parts.append(t(f"No known input signature{': ' + missing if missing else ''}", "yellow"))
    outputs = details.get("outputs") or []
    if outputs:
        table = Table(title="Outputs", title_justify="left")
        for column in ("Output", "Shape", "Type", "Kind"):
            table.add_column(column, overflow="fold")
        for o in outputs:
            table.add_row(t(o.get("name")), t(fmt_shape(o.get("shape"))), t(o.get("dtype")), t(o.get("kind")))
        parts.append(table)
    return Group(*parts)


# ---- sessions


def sessions_table(items: list[dict[str, Any]], total: int) -> Table:
    table = Table(title=f"Sessions ({total})", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("ID", "Model", "Preset", "Status", "Trials", "Created"):
        table.add_column(column, no_wrap=True)
    for s in items:
        status = s["status"]
        shown = status if status in TERMINAL else f"{status} {s['progress_percentage']:.0f}%"
        table.add_row(
            t(s["session_id"]),
            t(s["model_id"][:8]),  # in full: robopt sessions status ID
            t((s.get("criteria_name") or "").removesuffix("_optimization")),
            t(shown, STATUS_STYLES.get(status, "")),
            t(s["trials_done"]),
            t(str(s["created_at"])[5:16].replace("T", " ")),
        )
    return table


def status_details(s: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    best = s.get("best_so_far") or {}
    rows: list[tuple[str, Any]] = [
        ("Session", t(s["session_id"])),
        ("Status", status_text(s["status"])),
        (
            "Progress",
            t(
                f"{s['progress_percentage']:.0f}%"
                + (f" ({s['current_step']})" if s.get("current_step") else "")
            ),
        ),
        ("Trials", t(f"{s['trials_done']}" + (f" of {s['max_trials']}" if s.get("max_trials") else ""))),
        ("Model", t(s["model_id"])),
        ("Planner", t(s["planner"])),
        ("Selected version", t(s.get("selected_version"))),
        ("Result model", t(s.get("result_model_id"))),
    ]
    if best.get("version"):
        rows.append(
            (
                "Best so far",
                t(
                    f"{best['version']}: {best.get('size_reduction_percent', 0):.1f}% smaller, "
                    f"p50 {fmt_ms(best.get('latency_p50_ms'))}, "
                    f"{fmt_pct(best.get('accuracy_retained'))} accuracy"
                ),
            )
        )
    if s.get("error"):
        rows.append(("Error", t(s["error"], "red")))
    for key, value in rows:
        grid.add_row(t(key), value)
    return grid


def results_view(r: dict[str, Any]) -> Group:
    summary = r.get("optimization_summary") or {}
    parts: list[Any] = []
    if r.get("partial"):
        parts.append(t(f"Partial results: the session is {r.get('status')}.", "yellow"))
    if summary.get("text"):
        parts.append(t(summary["text"]))
    gains = r.get("performance_improvements")
    if gains:
        table = Table(title="Gains of the selected version", title_justify="left")
        for column in ("", "Original", "Selected", "Gain"):
            table.add_column(column)
        size = gains.get("size_reduction_percent") or {}
        lat = gains.get("latency_speedup") or {}
        mem = gains.get("memory_reduction_percent") or {}
        acc = gains.get("accuracy_retained") or {}
        table.add_row(
            t("Size"),
            t(fmt_bytes(size.get("baseline_bytes"))),
            t(fmt_bytes(size.get("optimized_bytes"))),
            t(f"{size.get('value', 0):.1f}% smaller", "green"),
        )
        table.add_row(
            t("Latency p50"),
            t(fmt_ms(lat.get("baseline_p50_ms"))),
            t(fmt_ms(lat.get("optimized_p50_ms"))),
            t(f"{lat.get('value', 1):.2f}x faster", "green"),
        )
        table.add_row(
            t("Peak memory"),
            t(f"{mem.get('baseline_mb')} MB"),
            t(f"{mem.get('optimized_mb')} MB"),
            t(f"{mem.get('value', 0):.1f}% less"),
        )
        table.add_row(
            t("Accuracy retained"),
            t(fmt_pct(acc.get("baseline", 1.0))),
            t(fmt_pct(acc.get("optimized"))),
            t(f"by {acc['metric']}" if acc.get("metric") else ""),
        )
        parts.append(table)
    trials = r.get("trials") or []
    if trials:
        table = Table(title="Trials", title_justify="left")
        table.add_column("#", no_wrap=True)
        table.add_column("Recipe", overflow="fold", ratio=1)
        for column in ("Version", "Size", "Latency p50", "Accuracy", "Decision"):
            table.add_column(column, no_wrap=True)
        for trial in trials:
            m = trial.get("measurement") or {}
            status = trial.get("status")
            table.add_row(
                t(trial.get("number")),
                t("\n".join(fmt_call(c) for c in trial.get("calls") or [])),
                t(trial.get("version_id")),
                t(fmt_bytes(m.get("size_bytes")) if m else None),
                t(fmt_ms(m.get("latency_p50_ms")) if m else None),
                t(fmt_pct(m.get("accuracy_retained")) if m else None),
                t(status, DECISION_STYLES.get(status or "", "")),
            )
        parts.append(table)
    recipe = r.get("recipe") or []
    parts.append(
        t("Recipe: " + (" -> ".join(fmt_call(c) for c in recipe) if recipe else "none (original kept)"))
    )
    selected = r.get("selected_version") or {}
    if selected.get("model_id"):
        parts.append(
            t(
                f"Selected {selected.get('version')} as model {selected['model_id']} "
                f"({selected.get('artifact_format')}); download: robopt sessions download {r['session_id']}"
            )
        )
    return Group(*parts)


def _label(word: str, style: str) -> tuple[str, str]:
    return f"{word:<9}", style


def event_line(kind: str, d: dict[str, Any]) -> Text | None:
    """One line per agent decision-worthy event; None for those the progress bar shows."""
    trial = f"trial {d['trial']}: " if d.get("trial") else ""
    if kind == "agent.thought":
        return Text.assemble(_label("thought", "magenta"), f"{trial}{d.get('text', '')}")
    if kind == "agent.action" and d.get("action") == "tool_call":
        return Text.assemble(_label("call", "blue"), f"{trial}{fmt_call(d)} on {d.get('base_version')}")
    if kind == "tool.result" and not d.get("ok"):
        return Text.assemble(_label("failed", "red"), f"{trial}{d.get('stage')}: {d.get('error')}")
    if kind == "evaluation":
        m = d.get("measurement") or {}
        return Text.assemble(
            _label("measure", "cyan"),
            f"{trial}{d.get('version')}: {fmt_bytes(m.get('size_bytes'))} "
            f"({d.get('size_reduction_percent', 0):.1f}% smaller), p50 {fmt_ms(m.get('latency_p50_ms'))}, "
            f"accuracy retained {fmt_pct(m.get('accuracy_retained'))}",
        )
    if kind == "decision":
        status = d.get("status", "")
        return Text.assemble(
            _label(status, DECISION_STYLES.get(status, "")),
            f"{trial}{d.get('version') or ''} {d.get('reason', '')}",
        )
    if kind == "rollback" and not d.get("automatic"):
        if d.get("pending"):
            return Text.assemble(_label("rollback", "yellow"), f"requested to {d.get('target_version')}")
        return Text.assemble(
            _label("rollback", "yellow"), f"{d.get('from_version')} -> {d.get('current_version')}"
        )
    if kind == "error":
        return Text.assemble(_label("error", "red"), f"{d.get('stage', '')}: {d.get('message', '')}")
    if kind == "message":
        who = "you" if d.get("role") == "user" else "agent"
        return Text.assemble(_label(who, "bold"), str(d.get("content", "")))
    if kind == "analysis" and d.get("kind") == "goal":
        c = d.get("criteria") or {}
        applied = ", ".join(f"{k}={v}" for k, v in (d.get("applied") or {}).items()) or "nothing"
        return Text.assemble(
            _label("goal", "magenta"),
            f"understood {applied}; preset {c.get('criteria_name')}, accuracy floor "
            f"{fmt_pct(c.get('target_accuracy_threshold'), 1)}, techniques "
            f"{', '.join(c.get('optimization_techniques') or [])}",
        )
    if kind == "analysis" and d.get("kind") == "profile":
        p = d.get("profile") or {}
        b = d.get("baseline") or {}
        return Text.assemble(
            _label("profile", "cyan"),
            f"{p.get('format')}, {p.get('total_parameters', 0):,} parameters on {d.get('device')}; baseline "
            f"{fmt_bytes(b.get('size_bytes'))}, p50 {fmt_ms(b.get('latency_p50_ms'))}",
        )
    return None


def print_json(console: Console, value: Any) -> None:
    console.print_json(json.dumps(value, default=str))
