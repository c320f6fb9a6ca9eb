"""scripts/gpu_check.py: skips cleanly without CUDA; its table shows per-method errors instead of crashing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="this machine has CUDA: the script runs the real checks"
)
def test_skips_without_cuda_and_exits_zero() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device: GPU checks skipped" in proc.stdout


def test_rejects_unknown_arguments() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--methods", "int3"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_table_reports_each_method_and_its_error() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    rows = [
        {"method": "bf16", "size_mb": 96.0, "size_vs_bf16": 1.0, "p50_ms": 0.5, "p90_ms": 0.6,
         "speedup_vs_bf16": 1.0, "peak_memory_mb": 200, "value": 1.0, "cosine": 0.9999,
         "relative_error": 0.004, "device_name": "NVIDIA H100"},
        {"method": "bnb_nf4", "error": "DependencyMissingError: no kernels"},
    ]  # fmt: skip
    table = gpu_check.format_table(rows, "linear", 1)
    assert "device=NVIDIA H100" in table
    lines = table.splitlines()
    assert lines[3].startswith("| bf16 | 96.0 | 1.00 | 0.500 |")
    assert lines[4].startswith("| bnb_nf4 | - |") and "DependencyMissingError: no kernels" in lines[4]


def test_orchestration_on_cpu_times_round_robin_and_isolates_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The script's run() on CPU with a small model: CPU methods measured, GPU-only ones fail in their row."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    small = {"name": "mlp_policy", "config": {"obs_dim": 64, "act_dim": 8, "hidden": [128, 128]}}
    monkeypatch.setitem(gpu_check.MODELS, "linear", small)
    methods = ["fp32", "bf16", "fp16", "bnb_nf4", "semi_structured_2_4"]
    rows = {r["method"]: r for r in gpu_check.run("linear", methods, 1, 1, 5, 16, rounds=2)}
    assert list(rows) == methods
    for method in ("fp32", "bf16", "fp16"):
        row = rows[method]
        assert "error" not in row, row.get("traceback")
        assert len(row["p50_rounds"]) == 2 and row["p50_ms"] > 0
        assert row["cosine"] > 0.99 and row["relative_error"] < 0.02
    assert rows["bf16"]["speedup_vs_bf16"] == 1.0 and rows["bf16"]["size_vs_bf16"] == 1.0
    assert rows["fp32"]["size_vs_bf16"] == pytest.approx(2.0, rel=0.05)
    if not torch.cuda.is_available():
        for method in ("bnb_nf4", "semi_structured_2_4"):
            assert rows[method]["error"].startswith("UnsupportedDeviceError")
            assert "p50_ms" not in rows[method]
    table = gpu_check.format_table(list(rows.values()), "linear", 1)
    assert len(table.splitlines()) == 3 + len(methods)


def test_covers_torchao_int8_and_times_each_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchao's CUDA int8 paths are rows; every model is timed at batch 1 and at a large batch (where 2:4
    sparse kernels can win), each batch size in its own table, fidelity shared."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert {"dynamic_int8", "weight_only_int8", "weight_only_int4", "semi_structured_2_4"} <= set(
        gpu_check.METHODS
    )
    assert 1 in gpu_check.BATCH_SIZES and max(gpu_check.BATCH_SIZES) >= 32
    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    small = {"name": "mlp_policy", "config": {"obs_dim": 64, "act_dim": 8, "hidden": [128, 128]}}
    monkeypatch.setitem(gpu_check.MODELS, "linear", small)
    methods = ["fp32", "bf16", "weight_only_int8", "semi_structured_2_4"]
    tables = gpu_check.run_batches("linear", methods, [1, 16], 1, 3, 16, rounds=1)
    assert list(tables) == [1, 16]
    for bs, rows in tables.items():
        by_method = {r["method"]: r for r in rows}
        assert list(by_method) == methods and all(r["batch_size"] == bs for r in rows)
        for method in ("fp32", "bf16", "weight_only_int8"):
            assert "error" not in by_method[method], by_method[method].get("traceback")
            assert by_method[method]["p50_ms"] > 0 and by_method[method]["cosine"] > 0.99
        assert by_method["weight_only_int8"]["size_vs_bf16"] < 0.75
        if not torch.cuda.is_available():
            assert by_method["semi_structured_2_4"]["error"].startswith("UnsupportedDeviceError")
        assert f"batch={bs}" in gpu_check.format_table(rows, "linear", bs)
    assert tables[1][2]["cosine"] == tables[16][2]["cosine"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --runtime runs the real tables")
def test_runtime_tables_skip_without_cuda_and_name_what_is_missing() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--runtime"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device: GPU checks skipped" in proc.stdout
    from evals.gpu_suite import prerequisites

    assert any("CUDA device" in m for m in prerequisites())


def test_runtime_table_orchestration_on_cpu_rows_floor_and_agreement() -> None:
    """evals.gpu_suite.runtime_table on CPU with a small VLA and the uncompiled static-cache runtime: every
    row of the issue's table is there in order, CPU-runnable rows measured (same tokens as eager bf16),
    GPU-only weight formats fail in their own row; the floor is weight bytes over the bandwidth."""
    from evals import gpu_suite
    from tests.tools.test_decode_runtime import TINY_VLA

    labels = [r[0] for r in gpu_suite.RUNTIME_ROWS]
    assert labels[:4] == ["eager bf16", "eager bnb nf4", "eager bnb int8", "runtime bf16"]
    assert {"runtime int4 weight-only", "runtime int8 weight-only", "runtime fp8 weight-only"} <= set(labels)
    assert set(gpu_suite.RUNTIME_MODELS) == {"vla_mini", "openvla_7b"}
    gpu_suite.RUNTIME_MODELS["tiny"] = {"name": "vla", "config": TINY_VLA}
    try:
        chosen = [r for r in gpu_suite.RUNTIME_ROWS if r[1] in (None, "bnb_nf4", "fp8_dynamic")]
        rows = gpu_suite.runtime_table(
            "tiny", device="cpu", mode=None, rows=chosen, warmup=1, iterations=2, agreement_samples=4
        )
    finally:
        del gpu_suite.RUNTIME_MODELS["tiny"]
    by = {r["variant"]: r for r in rows}
    assert list(by) == [r[0] for r in chosen]
    for label in ("eager bf16", "runtime bf16"):
        row = by[label]
        assert "error" not in row, row
        assert row["token_agreement"] == 1.0 and row["p50_ms"] > 0
        assert row["floor_ms"] == pytest.approx(row["weight_gb"] * 1e9 / (row["bandwidth_tbps"] * 1e12) * 1e3)
    if not torch.cuda.is_available():
        assert by["eager bnb nf4"]["error"].startswith("UnsupportedDeviceError")
        assert by["runtime fp8 dynamic"]["error"].startswith("UnsupportedDeviceError")
    table = gpu_suite.format_runtime_table(rows)
    assert len(table.splitlines()) == 3 + len(rows) and "| runtime bf16 |" in table


def test_bandwidth_floor_reads_the_device_name() -> None:
    from evals.gpu_suite import device_bandwidth

    assert device_bandwidth("NVIDIA H100 80GB HBM3") == (3.35, True)
    assert device_bandwidth("NVIDIA H200") == (4.8, True)
    assert device_bandwidth("Some GPU")[1] is False
