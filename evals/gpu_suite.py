"""The `gpu` suite: openvla-7b-shape (random weights) on one CUDA device.

The model is built directly on the GPU in bf16 (never on a CPU). The agent optimizes it; then the
bf16 original, bitsandbytes nf4, bitsandbytes int8 and the agent's pick are timed side by side in
this one process with CUDA events: one action = vision encoders, prefill of image + instruction
tokens, and the 7 greedy action tokens over the KV cache (the openvla_7b preset decodes as OpenVLA). Each
time is printed beside its memory-bandwidth floor: weight bytes / the device's memory bandwidth.
The agent may use the decode runtime (`compilation` is allowed: compile_model, CUDA graphs). Then the
decode runtime tables (`runtime_table`, also `scripts/gpu_check.py --runtime`): vla-mini and the 7B shape,
eager bf16 / bnb nf4 / bnb int8 against the static-KV-cache runtime x each weight format, with weight
memory, the bandwidth floor and action-token agreement. Without CUDA the suite prints why it is skipped
and exits 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

# Peak memory bandwidth in TB/s by device-name fragment (vendor data sheets), most specific first.
BANDWIDTH_TBPS: list[tuple[str, float]] = [
    ("H200", 4.8),
    ("H100 PCIE", 2.0),
    ("H100 NVL", 3.9),
    ("H100", 3.35),
    ("GH200", 4.0),
    ("A100-SXM4-80GB", 2.039),
    ("A100 80GB PCIE", 1.935),
    ("A100", 1.555),
    ("L40S", 0.864),
    ("L4", 0.3),
    ("A10G", 0.6),
    ("A10", 0.6),
    ("RTX 4090", 1.008),
    ("RTX 3090", 0.936),
    ("V100", 0.9),
    ("T4", 0.32),
]
DEFAULT_BANDWIDTH_TBPS = 1.0


def device_bandwidth(name: str) -> tuple[float, bool]:
    """(TB/s, known) for a CUDA device name; unknown devices get a default, flagged."""
    upper = name.upper()
    for frag, bw in BANDWIDTH_TBPS:
        if frag.upper() in upper:
            return bw, True
    return DEFAULT_BANDWIDTH_TBPS, False


def weight_bytes(model: Any) -> int:
    """Bytes of parameters and buffers as stored (packed 4-bit weights count as stored)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def build_openvla_shape(device: str = "cuda") -> Any:
    """openvla_7b preset, random weights, allocated in bf16 on `device` directly."""
    import torch

    from tools.architectures import build_model, canonical_ref, input_specs
    from tools.handle import ModelHandle

    ref = canonical_ref("openvla_7b")
    model = build_model(ref, device=device, dtype=torch.bfloat16)  # allocated in bf16 on the GPU
    return ModelHandle(
        runtime="torch",
        format="state_dict",
        model=model,
        inputs=input_specs(ref),
        architecture=ref,
        device=device,
        metadata={"name": "openvla-7b-shape", "reference": "openvla-7b-shape"},
    )


def time_action(handle: Any, *, warmup: int = 3, iterations: int = 10) -> dict[str, float]:
    import torch

    from tools.runtime import synthesize_inputs, to_tensors, torch_forward

    inputs = to_tensors(handle, synthesize_inputs(handle.inputs, 1, seed=0))
    if not str(handle.device).startswith("cuda"):  # the CPU tests of the orchestration
        with torch.inference_mode():
            for _ in range(warmup):
                torch_forward(handle, inputs)
            cpu_times = []
            for _ in range(iterations):
                t = time.perf_counter()
                torch_forward(handle, inputs)
                cpu_times.append((time.perf_counter() - t) * 1e3)
        cpu_times.sort()
        return {"p50_ms": cpu_times[len(cpu_times) // 2], "min_ms": cpu_times[0]}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            torch_forward(handle, inputs)
        torch.cuda.synchronize()
        for _ in range(iterations):
            start.record()
            torch_forward(handle, inputs)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    times.sort()
    return {"p50_ms": times[len(times) // 2], "min_ms": times[0]}


# ------------------------------------------------------------------------------------------------
# The decode runtime table: eager baselines vs the static-KV-cache runtime x weight format
# ------------------------------------------------------------------------------------------------

# (label, weight format `quantize` applies to the bf16 model or None, through the decode runtime?)
# In priority order: a row that would start past the time budget is reported as skipped.
RUNTIME_ROWS: list[tuple[str, str | None, bool]] = [
    ("eager bf16", None, False),
    ("eager bnb nf4", "bnb_nf4", False),
    ("eager bnb int8", "bnb_int8", False),
    ("runtime bf16", None, True),
    ("runtime int4 weight-only", "weight_only_int4", True),
    ("runtime int8 weight-only", "weight_only_int8", True),
    ("runtime fp8 weight-only", "fp8_weight_only", True),
    ("runtime fp8 dynamic", "fp8_dynamic", True),
]
# The models of the table: OpenVLA-7B's shape and vla-mini's, both decoding as OpenVLA does (prefill, then
# 7 greedy action tokens over the KV cache). vla-mini's preset decodes in parallel: here autoregressively.
RUNTIME_MODELS: dict[str, dict[str, Any]] = {
    "vla_mini": {"name": "vla", "config": {"preset": "vla_mini", "decoding": "autoregressive"}},
    "openvla_7b": {"name": "vla", "config": {"preset": "openvla_7b"}},
}
TARGETS = {"openvla_7b": {"ms_per_action": 20.0, "weight_gb": 4.5}, "vla_mini": {"token_agreement": 0.99}}


def prerequisites() -> list[str]:
    """What the runtime table needs and this machine lacks (empty: everything is there)."""
    import importlib.util

    import torch

    missing = []
    if not torch.cuda.is_available():
        missing.append(f"a CUDA device (torch {torch.__version__} sees none)")
    for module, why in (
        ("triton", "inductor's CUDA kernels (compile_model on CUDA)"),
        ("torchao", "int8 / int4 / float8 weight formats"),
        ("bitsandbytes", "the nf4 / int8 eager baselines"),
    ):
        if importlib.util.find_spec(module) is None:
            missing.append(f"{module} ({why}; pip install the wheel brought along)")
    if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
        missing.append(f"float8 kernels (compute capability 8.9+; {torch.cuda.get_device_name()} has less)")
    return missing


def _vla_handle(key: str, device: str, dtype: Any) -> Any:
    from tools.architectures import build_model, canonical_ref, input_specs
    from tools.handle import ModelHandle

    ref = canonical_ref(RUNTIME_MODELS[key])
    model = build_model(ref, device=device, dtype=dtype).eval()  # allocated in `dtype` on the device
    return ModelHandle(
        runtime="torch", format="state_dict", model=model, inputs=input_specs(ref), architecture=ref,
        device=device, metadata={"name": key},
    )  # fmt: skip


def _allocated(device: str) -> int:
    import torch

    if not device.startswith("cuda"):
        return 0
    torch.cuda.synchronize()
    return int(torch.cuda.memory_allocated())


def action_tokens(handle: Any, samples: list[dict[str, Any]]) -> Any:
    """The 7 greedy action tokens of each sample, one action (batch 1) at a time."""
    import numpy as np

    from tools.runtime import forward

    return np.concatenate([forward(handle, x).argmax(-1) for x in samples])


def runtime_table(
    key: str,
    *,
    device: str = "cuda",
    mode: str | None = "reduce-overhead",
    rows: list[tuple[str, str | None, bool]] | None = None,
    warmup: int = 5,
    iterations: int = 20,
    agreement_samples: int = 64,
    budget_s: float = 240.0,
) -> list[dict[str, Any]]:
    """One row per (weight format, eager or runtime) for model `key`, batch 1, one action: p50 / min ms by
    CUDA events, weight bytes (allocated by the candidate; serialized size off CUDA), the bandwidth floor
    (weight bytes / the device's bandwidth), action-token agreement with eager bf16. `mode`: compile_model's
    mode, None for the uncompiled static-cache runtime (the CPU tests). A failing row keeps its error."""
    import gc

    import torch

    from tools.compiling import compile_model
    from tools.decode_runtime import decode_runtime
    from tools.exporting import serialized_size
    from tools.quantization import quantize
    from tools.runtime import synthesize_inputs

    started = time.perf_counter()
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    bw, known = device_bandwidth(name) if device.startswith("cuda") else (DEFAULT_BANDWIDTH_TBPS, False)
    before = _allocated(device)
    base = _vla_handle(key, device, torch.bfloat16)
    base_bytes = _allocated(device) - before if device.startswith("cuda") else serialized_size(base)
    data = synthesize_inputs(base.inputs, agreement_samples, seed=0)
    samples = [{k: v[i : i + 1] for k, v in data.items()} for i in range(agreement_samples)]
    reference = action_tokens(base, samples)
    out: list[dict[str, Any]] = []
    for label, method, runtime in rows or RUNTIME_ROWS:
        row: dict[str, Any] = {"model": key, "variant": label, "device_name": name, "bandwidth_tbps": bw,
                               "bandwidth_known": known}  # fmt: skip
        out.append(row)
        if time.perf_counter() - started > budget_s:
            row["error"] = f"skipped: the table's {budget_s:.0f} s budget was spent"
            continue
        candidate = None
        try:
            t = time.perf_counter()
            mark = _allocated(device)
            candidate = base if method is None else quantize(base, method)
            weights = (_allocated(device) - mark) if method is not None else base_bytes
            if not device.startswith("cuda"):
                weights = serialized_size(candidate)
            if runtime:
                if mode is None:
                    step = {"tool": "decode_runtime", "compiled": False}
                    candidate = candidate.with_step(decode_runtime(candidate.model), step)
                else:
                    candidate = compile_model(candidate, device=device, mode=mode)
            row["build_s"] = round(time.perf_counter() - t, 1)
            timing = time_action(candidate, warmup=warmup, iterations=iterations)
            row.update(timing)
            row["weight_gb"] = weights / 1e9
            row["floor_ms"] = weights / (bw * 1e12) * 1e3
            row["x_floor"] = row["p50_ms"] / row["floor_ms"] if row["floor_ms"] else None
            row["token_agreement"] = float((action_tokens(candidate, samples) == reference).mean())
        except Exception as exc:  # one failing row must not hide the others
            text = str(exc).splitlines()[0] if str(exc) else ""
            row["error"] = f"{type(exc).__name__}: {text}"[:300]
        finally:
            del candidate
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return out


def format_runtime_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of `runtime_table` rows, with the targets of the model it holds."""
    if not rows:
        return ""
    key = rows[0]["model"]
    head = (
        f"decode runtime: model={key} batch=1, one action (vision, prefill, 7 action tokens); "
        f"device={rows[0]['device_name']} bandwidth={rows[0]['bandwidth_tbps']} TB/s"
        + ("" if rows[0].get("bandwidth_known") else " (unknown device: default)")
        + f"; targets {TARGETS.get(key, {})}\n"
        "| variant | weights GB | p50 ms | min ms | floor ms | x floor | token agreement | build s "
        "| error |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:

        def f(k: str, fmt: str = "{:.2f}", row: dict[str, Any] = r) -> str:
            v = row.get(k)
            return fmt.format(v) if isinstance(v, (int, float)) else "-"

        lines.append(
            f"| {r['variant']} | {f('weight_gb', '{:.3f}')} | {f('p50_ms')} | {f('min_ms')} | "
            f"{f('floor_ms')} | {f('x_floor')} | {f('token_agreement', '{:.4f}')} | {f('build_s', '{:.1f}')} "
            f"| {r.get('error', '')} |"
        )
    return "\n".join(lines)


def run_gpu_suite(out: Path, *, planner: str = "rules") -> int:
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu suite skipped: CUDA is not available on this machine (openvla-7b-shape needs one GPU "
            "with ~40 GB free; it is never built on a CPU)."
        )
        return 0
    from agents.criteria import Criteria, meets, objective, size_reduction_percent, speedup
    from evals.methods import measure
    from evals.report import ResultRow, write_results
    from tools.quantization import quantize

    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0)
    bw, known = device_bandwidth(name)
    t0 = time.perf_counter()
    original = build_openvla_shape()
    print(f"built openvla-7b-shape in bf16 on {name} in {time.perf_counter() - t0:.1f} s")
    criteria = Criteria(
        criteria_name="max_speed",
        target_accuracy_threshold=0.9,
        optimization_techniques=["quantization", "compilation"],
        device="cuda",
        max_trials=4,
        benchmark_iterations=10,
        benchmark_warmup=2,
    )
    base = measure(original, original, criteria)
    variants: dict[str, Any] = {"baseline:bf16": original}
    wall: dict[str, float] = {"baseline:bf16": 0.0}
    trials: dict[str, int] = {"baseline:bf16": 0}
    for method in ("bnb_nf4", "bnb_int8"):
        t = time.perf_counter()
        variants[f"baseline:{method}"] = quantize(original, method)
        wall[f"baseline:{method}"] = time.perf_counter() - t
        trials[f"baseline:{method}"] = 1
    from agents.local import optimize_local

    t = time.perf_counter()
    outcome = optimize_local(original, criteria, planner=planner)
    label = (
        "agent["
        + planner
        + "]:"
        + ("+".join(str(c.arguments.get("method") or c.tool) for c in outcome.recipe) or "original")
    )
    variants[label] = outcome.selected
    wall[label] = time.perf_counter() - t
    trials[label] = outcome.num_trials

    rows, lines = [], []
    header = f"{'variant':34s} {'weights GB':>10s} {'p50 ms':>8s} {'floor ms':>9s} {'x floor':>8s}"
    lines.append(f"device: {name}; bandwidth {bw} TB/s" + ("" if known else " (unknown device: default)"))
    lines.append(header)
    for method, handle in variants.items():
        timing = time_action(handle)
        wb = weight_bytes(handle.model)
        floor_ms = wb / (bw * 1e12) * 1e3
        lines.append(
            f"{method:34s} {wb / 1e9:10.2f} {timing['p50_ms']:8.1f} {floor_ms:9.1f} "
            f"{timing['p50_ms'] / floor_ms:8.2f}"
        )
        m = measure(handle, original, criteria)
        rows.append(
            ResultRow(
                case="openvla-7b-shape",
                method=method,
                criteria_met=meets(criteria, base, m),
                score=objective(criteria, base, m),
                size_reduction_percent=round(size_reduction_percent(base, m), 2),
                latency_speedup=round(speedup(base, m), 3),
                accuracy_retained=round(m.accuracy_retained, 5),
                task_success=None,
                trials=trials[method],
                wall_s=round(wall[method], 2),
            )
        )
    table = "\n".join(lines)
    print(table)
    # The decode runtime tables (issue 12): eager baselines vs the runtime x weight format, per model.
    del variants, original, outcome, handle
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    for key, samples, budget in (("vla_mini", 64, 120.0), ("openvla_7b", 8, 300.0)):
        runtime_rows = runtime_table(key, agreement_samples=samples, budget_s=budget)
        (out / f"runtime_{key}.json").write_text(json.dumps(runtime_rows, indent=1, default=str))
        table += "\n\n" + format_runtime_table(runtime_rows)
        print(format_runtime_table(runtime_rows), flush=True)
    write_results(out, rows)
    (out / "gpu_timing.txt").write_text(table + "\n")
    (out / "report.md").write_text(
        "# robopt eval report: suite `gpu`\n\nOne action (vision, prefill, 7 greedy action tokens), "
        "batch 1, CUDA events, side by side in one process.\n\n```\n"
        + table
        + "\n```\n\n"
        + json.dumps([r.model_dump() for r in rows], indent=1)
        + "\n"
    )
    return 0
