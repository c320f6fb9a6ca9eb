"""The `gpu` suite: openvla-7b-shape (random weights) on one CUDA device.

The model is built directly on the GPU in bf16 (never on a CPU). The agent optimizes it; then the
bf16 original, bitsandbytes nf4, bitsandbytes int8 and the agent's pick are timed side by side in
this one process with CUDA events: one action = vision encoders, prefill of image + instruction
tokens, and the 7 action tokens (the toolbox's VLA decodes the 7 action tokens in one pass). Each
time is printed beside its memory-bandwidth floor: weight bytes / the device's memory bandwidth.
Without CUDA the suite prints why it is skipped and exits 0.
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
        optimization_techniques=["quantization"],
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
        + ("+".join(str(c.arguments.get("method")) for c in outcome.recipe) or "original")
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
    write_results(out, rows)
    (out / "gpu_timing.txt").write_text(table + "\n")
    (out / "report.md").write_text(
        "# robopt eval report: suite `gpu`\n\nOne action (vision, prefill, 7 action tokens in one pass), "
        "batch 1, CUDA events, side by side in one process.\n\n```\n"
        + table
        + "\n```\n\n"
        + json.dumps([r.model_dump() for r in rows], indent=1)
        + "\n"
    )
    return 0
