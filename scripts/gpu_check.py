"""Run every GPU method side by side on one CUDA device and print size, latency and fidelity.

Methods: bf16 (the baseline every row is compared with), fp16, bitsandbytes int8 and nf4,
torchao's CUDA paths (int8 dynamic activation + int8 weight, int8 weight-only, int4 weight-only,
on the bf16 model), and 2:4 semi-structured sparsity (on the bf16 model); fp32 is shown for
reference. Each row is one model from `tools.quantization` / `tools.pruning`, timed with
`tools.benchmarking` (CUDA events, warm-up excluded) on the same inputs, and scored with
`tools.evaluation` against the highest-precision model (fp32, or bf16 for openvla_7b).
A method that fails prints its error in its row; the others still run.

Every model is timed at each batch size (default 1 and 64, one table each): at batch 1 a Linear
layer is memory-bound and weight-only int4/int8 shine; 2:4 sparse kernels (and int8 dynamic
activations) need a larger batch, where the matmuls are compute-bound, to be faster than bf16.

    python scripts/gpu_check.py                      # Linear-heavy MLP (4 x 4096 wide), batch 1 and 64
    python scripts/gpu_check.py --batch-sizes 1 8 64 # other batch sizes
    python scripts/gpu_check.py --model vla_mini     # the small VLA
    python scripts/gpu_check.py --model openvla_7b   # OpenVLA-7B shape, random weights, bf16 reference
    python scripts/gpu_check.py --json out.json      # also write the rows as JSON
    python scripts/gpu_check.py --runtime            # the decode runtime tables (at most ~8 min, below)

`--runtime` is the one prepared run of issue 12's measurements: it checks its prerequisites first (CUDA,
triton, torchao, bitsandbytes, float8-capable GPU) and prints what is missing, then times vla-mini and
the OpenVLA-7B shape (random weights, bf16), batch 1, one action (vision, prefill, 7 greedy action tokens):
eager bf16, bitsandbytes nf4 and int8, and the static-KV-cache decode runtime (compile_model,
mode reduce-overhead: CUDA graphs) x each weight format (bf16, torchao int4 / int8 weight-only, float8
weight-only / dynamic), with CUDA events, the weight memory each holds, the device's bandwidth floor and
the action-token agreement with eager bf16 (evals.gpu_suite.runtime_table). Rows that would start after
the time budget (`--budget-s`, default 450 s over both models) are printed as skipped.

Without a CUDA device it prints "no CUDA device: GPU checks skipped" and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# Runnable as `python scripts/gpu_check.py` from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SKIP_MESSAGE = "no CUDA device: GPU checks skipped"
# Where models are built and timed; the tests run the orchestration on "cpu".
DEVICE = "cuda"
METHODS = (
    "fp32",
    "bf16",
    "fp16",
    "bnb_int8",
    "bnb_nf4",
    "dynamic_int8",
    "weight_only_int8",
    "weight_only_int4",
    "semi_structured_2_4",
)
# torchao's int8 paths quantize the bf16 model (their CUDA kernels compute in bf16).
FROM_BF16 = ("dynamic_int8", "weight_only_int8", "semi_structured_2_4")
BATCH_SIZES = (1, 64)
MODELS: dict[str, dict[str, Any]] = {
    "linear": {
        "name": "mlp_policy",
        "config": {"obs_dim": 4096, "act_dim": 4096, "hidden": [4096, 4096, 4096], "activation": "gelu"},
    },
    "vla_mini": {"name": "vla_mini", "config": {}},
    "openvla_7b": {"name": "openvla_7b", "config": {}},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="linear")
    parser.add_argument(
        "--batch-sizes",
        "--batch-size",
        dest="batch_sizes",
        type=int,
        nargs="+",
        default=list(BATCH_SIZES),
        help="time every model at each of these batch sizes (one table each)",
    )
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--samples", type=int, default=64, help="evaluation samples for fidelity")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin timing rounds (1 for openvla_7b)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    parser.add_argument(
        "--runtime", action="store_true", help="the decode runtime tables (vla_mini, openvla_7b) instead"
    )
    parser.add_argument("--budget-s", type=float, default=450.0, help="--runtime: seconds for both tables")
    parser.add_argument(
        "--runtime-cpu",
        action="store_true",
        help="--runtime on this CPU instead (vla_mini only, inductor, no CUDA graphs; GPU formats fail)",
    )
    args = parser.parse_args(argv)

    if any(b < 1 for b in args.batch_sizes):
        parser.error("batch sizes must be positive")

    import torch

    if args.runtime_cpu:
        return run_runtime(args.budget_s, args.json, device="cpu")
    if not torch.cuda.is_available():
        print(f"{SKIP_MESSAGE} (torch {torch.__version__}; nothing was run)")
        return 0

    if args.runtime:
        return run_runtime(args.budget_s, args.json)

    tables = run_batches(
        args.model, args.methods, args.batch_sizes, args.warmup, args.iterations, args.samples, args.rounds
    )
    print("\n\n".join(format_table(rows, args.model, bs) for bs, rows in tables.items()))
    if args.json is not None:
        args.json.write_text(
            json.dumps({str(bs): rows for bs, rows in tables.items()}, indent=2, default=str)
        )
    return 0


# The runtime tables' share of the budget: vla-mini is small (its compiles dominate), the 7B shape the rest.
RUNTIME_SHARES = {"vla_mini": 0.3, "openvla_7b": 0.7}
# Actions compared with eager bf16 for the agreement column (one bnb int8 action of the 7B takes ~0.8 s).
AGREEMENT_SAMPLES = {"vla_mini": 64, "openvla_7b": 8}


def run_runtime(budget_s: float, json_path: Path | None = None, *, device: str | None = None) -> int:
    """Prerequisites, then the decode runtime table of each model (evals.gpu_suite.runtime_table); on
    `device="cpu"` vla_mini only, compiled with mode "default"."""
    from evals.gpu_suite import RUNTIME_ROWS, format_runtime_table, prerequisites, runtime_table

    missing = prerequisites()
    print("prerequisites: " + ("all present" if not missing else "missing: " + "; ".join(missing)))
    started = time.perf_counter()
    tables: dict[str, list[dict[str, Any]]] = {}
    on = device or DEVICE
    shares = RUNTIME_SHARES if on.startswith("cuda") else {"vla_mini": 1.0}
    rows_of = RUNTIME_ROWS
    if not on.startswith("cuda"):
        # torchao int8 weight-only under inductor on a CPU ended the process (no error) on 2026-12-02.
        rows_of = [r for r in RUNTIME_ROWS if r[1] != "weight_only_int8"]
        print("CPU: the torchao int8 weight-only runtime row is left out (it crashed the process here)")
    for key, share in shares.items():
        left = budget_s - (time.perf_counter() - started)
        rows = runtime_table(
            key,
            device=on,
            mode="reduce-overhead" if on.startswith("cuda") else "default",
            rows=rows_of,
            agreement_samples=AGREEMENT_SAMPLES[key],
            budget_s=max(0.0, min(left, share * budget_s)),
        )
        tables[key] = rows
        print(format_runtime_table(rows) + "\n", flush=True)
        gc.collect()
    print(f"runtime tables done in {time.perf_counter() - started:.0f} s")
    if json_path is not None:
        json_path.write_text(json.dumps(tables, indent=2, default=str))
    return 0


def _base_handle(model_key: str, dtype: Any) -> Any:
    from tools.architectures import build_model, canonical_ref, input_specs
    from tools.handle import ModelHandle

    ref = canonical_ref(MODELS[model_key])
    model = build_model(ref, device=DEVICE, dtype=dtype)
    return ModelHandle(
        runtime="torch",
        format="state_dict",
        model=model,
        inputs=input_specs(ref),
        architecture=ref,
        device=DEVICE,
    )


def _apply(method: str, fp32: Any, bf16: Any) -> Any:
    from tools.pruning import prune
    from tools.quantization import quantize

    if method == "fp32":
        return fp32
    if method == "bf16":
        return bf16
    if method == "semi_structured_2_4":
        return prune(bf16, "semi_structured_2_4", 0.5)
    if method in FROM_BF16:
        return quantize(bf16, method)
    # bf16/fp16 casts and weight-only int4 start from the float model, the bnb methods too.
    return quantize(fp32 if fp32 is not None else bf16, method)


def run(
    model_key: str,
    methods: list[str],
    batch_size: int,
    warmup: int,
    iterations: int,
    samples: int,
    rounds: int = 3,
) -> list[dict[str, Any]]:
    """The rows of one batch size (see `run_batches`)."""
    return run_batches(model_key, methods, [batch_size], warmup, iterations, samples, rounds)[batch_size]


def run_batches(
    model_key: str,
    methods: list[str],
    batch_sizes: list[int],
    warmup: int,
    iterations: int,
    samples: int,
    rounds: int = 3,
) -> dict[int, list[dict[str, Any]]]:
    """Build every method's model once, time it at each batch size round-robin (`rounds` times), score it.

    Round-robin timing spreads clock and thermal drift over all methods alike; each row's p50 is
    the median of its rounds' p50s. openvla_7b keeps one candidate at a time (memory), one round.
    Returns {batch size: rows}; fidelity does not depend on the batch size and is the same in each.
    """
    import torch

    from tools.evaluation import evaluate
    from tools.handle import EvalData
    from tools.runtime import synthesize_inputs

    sizes = list(dict.fromkeys(batch_sizes))
    big = model_key == "openvla_7b"
    # openvla_7b in fp32 is 30 GB; its reference is the bf16 model.
    fp32 = None if big else _base_handle(model_key, torch.float32)
    bf16 = _base_handle(model_key, torch.bfloat16) if big else _bf16_of(fp32)
    reference = bf16 if big else fp32
    data = EvalData(inputs=synthesize_inputs(reference.inputs, samples, seed=0))
    wanted = [m for m in methods if not (big and m == "fp32")]
    tables: dict[int, dict[str, dict[str, Any]]] = {
        bs: {m: {"method": m, "batch_size": bs, "p50_rounds": []} for m in wanted} for bs in sizes
    }

    def record(method: str, exc: Exception) -> None:
        for rows in tables.values():
            _record_error(rows[method], exc)

    def build(method: str) -> Any:
        started = time.perf_counter()
        try:
            candidate = _apply(method, fp32, bf16)
        except Exception as exc:  # one failing method must not hide the others
            record(method, exc)
            return None
        for rows in tables.values():
            rows[method]["apply_s"] = time.perf_counter() - started
        return candidate

    def measure(method: str, candidate: Any, bs: int) -> None:
        row = tables[bs][method]
        if "error" in row:
            return
        try:
            _bench_into(row, candidate, bs, warmup, iterations)
        except Exception as exc:
            _record_error(row, exc)

    def score(method: str, candidate: Any) -> None:
        try:
            result = evaluate(candidate, reference=reference, data=data, batch_size=min(16, samples))
        except Exception as exc:
            record(method, exc)
            return
        for rows in tables.values():
            rows[method].update(
                top1_agreement=result.top1_agreement,
                cosine=result.cosine_similarity,
                relative_error=result.relative_error,
                metric=result.metric,
                value=result.value,
            )

    if big or rounds <= 1:
        for method in wanted:
            candidate = build(method)
            if candidate is not None:
                for bs in sizes:
                    measure(method, candidate, bs)
                score(method, candidate)
            del candidate
            gc.collect()
            torch.cuda.empty_cache()
    else:
        built = {m: c for m in wanted if (c := build(m)) is not None}
        for _ in range(rounds):
            for bs in sizes:
                for method, candidate in built.items():
                    measure(method, candidate, bs)
        for method, candidate in built.items():
            score(method, candidate)

    out: dict[int, list[dict[str, Any]]] = {}
    for bs, rows in tables.items():
        out[bs] = list(rows.values())
        for row in out[bs]:
            if row["p50_rounds"]:
                row["p50_ms"] = statistics.median(row["p50_rounds"])
        base = rows.get("bf16")
        for row in out[bs]:
            if base is not None and "p50_ms" in base and "p50_ms" in row:
                row["speedup_vs_bf16"] = base["p50_ms"] / row["p50_ms"]
                row["size_vs_bf16"] = row["size_mb"] / base["size_mb"]
    return out


def _bench_into(row: dict[str, Any], candidate: Any, batch_size: int, warmup: int, iterations: int) -> None:
    from tools.benchmarking import benchmark

    bench = benchmark(candidate, device=DEVICE, batch_size=batch_size, warmup=warmup, iterations=iterations)
    row["p50_rounds"].append(bench.p50_ms)
    row["p90_ms"] = max(row.get("p90_ms", 0.0), bench.p90_ms)  # the worst round's
    row.update(
        size_mb=bench.size_bytes / 2**20,
        size_method=bench.size_method,
        peak_memory_mb=bench.peak_memory_mb,
        device_name=bench.device_name,
    )


def _record_error(row: dict[str, Any], exc: Exception) -> None:
    text = str(exc).splitlines()[0] if str(exc) else ""
    row.setdefault("error", f"{type(exc).__name__}: {text}")
    row.setdefault("traceback", traceback.format_exc(limit=4))


def _bf16_of(fp32: Any) -> Any:
    from tools.quantization import quantize

    return quantize(fp32, "bf16")


def format_table(rows: list[dict[str, Any]], model_key: str, batch_size: int) -> str:
    device = next((r["device_name"] for r in rows if "device_name" in r), "?")
    head = (
        f"GPU check: model={model_key} batch={batch_size} device={device}\n"
        "| method | size MB | size/bf16 | p50 ms | p90 ms | speed-up/bf16 | peak MB | fidelity | top-1 "
        "| cosine | rel. err | error |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:

        def f(key: str, fmt: str = "{:.3f}", row: dict[str, Any] = r) -> str:
            v = row.get(key)
            return fmt.format(v) if isinstance(v, (int, float)) else "-"

        lines.append(
            f"| {r['method']} | {f('size_mb', '{:.1f}')} | {f('size_vs_bf16', '{:.2f}')} | {f('p50_ms')} | "
            f"{f('p90_ms')} | {f('speedup_vs_bf16', '{:.2f}x')} | {f('peak_memory_mb', '{:.0f}')} | "
            f"{f('value')} | {f('top1_agreement')} | {f('cosine', '{:.4f}')} | "
            f"{f('relative_error', '{:.4f}')} | {r.get('error', '')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
