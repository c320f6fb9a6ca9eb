"""End to end: the harness's CLI on a freshly built reference model, into a temp directory.

CI runs the full `--suite smoke` separately (`make eval-smoke`); here one case of the `tiny` suite
keeps the test suite's budget while still exercising training, the agent, the fixed recipes, the
oracle grid, the final measurement pass, closed-loop scoring, the JSON, the table and the plots.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.cli import main
from evals.report import ROW_FIELDS


@pytest.mark.slow
def test_tiny_suite_writes_table_json_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = main(
        ["run", "--suite", "tiny", "--case", "digits-cnn", "--out", str(out), "--data-dir", str(tmp_path)]
    )
    assert rc == 0

    # The reference was trained and cached on the first build.
    ref_dir = tmp_path / "reference" / "digits-cnn"
    meta = json.loads((ref_dir / "meta.json").read_text())
    assert meta["test_accuracy"] > 0.9
    assert (ref_dir / "model.safetensors").stat().st_size > 100_000

    rows = json.loads((out / "results.json").read_text())["cases"]
    assert all(tuple(r) == ROW_FIELDS for r in rows)
    methods = [r["method"] for r in rows]
    assert sum(m.startswith("agent") for m in methods) == 1
    assert sum(m.startswith("oracle") for m in methods) == 1
    assert {"baseline:dynamic_int8", "baseline:bnb_nf4", "baseline:magnitude50", "baseline:fp16"} <= set(
        methods
    )

    nf4 = next(r for r in rows if r["method"] == "baseline:bnb_nf4")
    assert nf4["score"] is None  # GPU-only: reported as not runnable, not scored
    report = (out / "report.md").read_text()
    assert "not runnable on CPU" in report
    assert "| digits-cnn | agent[rules]" in report

    agent = next(r for r in rows if r["method"].startswith("agent"))
    oracle = next(r for r in rows if r["method"].startswith("oracle"))
    assert agent["criteria_met"] is True
    assert oracle["trials"] >= 32
    assert 0 < agent["trials"] <= 8
    int8 = next(r for r in rows if r["method"] == "baseline:dynamic_int8")
    assert int8["size_reduction_percent"] > 50  # int8 weights really shrink the saved model
    assert 0.9 < int8["task_success"] <= 1.0  # test accuracy of the quantized CNN

    grid = json.loads((out / "grid.json").read_text())["digits-cnn"]
    assert len([p for p in grid if "score" in p]) == oracle["trials"]
    best = max((p for p in grid if p.get("criteria_met")), key=lambda p: p["score"])
    assert oracle["method"] == f"oracle:{best['recipe']}"  # the oracle is the grid's best point
    for name in ("accuracy_vs_size.png", "accuracy_vs_latency.png", "pareto.png"):
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 5_000
