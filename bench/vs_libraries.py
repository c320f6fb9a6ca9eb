"""robopt's session pick against the plain library calls a user would make, on the zoo models.

    .venv/bin/python bench/vs_libraries.py [--models bert,vit] [--floor 0.97] [--size-target 75]

For every zoo model (`evals.zoo`: transformers architectures robopt did not build, exported plainly to
ONNX), side by side, in one run:

- robopt: `agents.local.optimize_local` on the ONNX file as uploaded, rules planner, device cpu, the
  size target and accuracy floor given (75% smaller, 0.97 by default) with the `max_compression` preset
  (`--preset`): its objective pays most for size, which is what this comparison measures; with
  `balanced_optimization` the session also pays for speed and for accuracy above the floor, and may
  select a larger, more faithful or faster version than the smallest one it measured.
- ORT dynamic: `onnxruntime.quantization.quantize_dynamic(model, out)` (defaults).
- ORT dynamic per-channel: `quantize_dynamic(model, out, per_channel=True)`.
- ORT static QDQ: `quantize_static(model, out, reader)` (defaults: QDQ, per-tensor), calibrated on 32
  realistic inputs (`ZooModel.make_inputs`, seeds apart from the evaluation inputs).
- ORT MatMulNBits 4-bit: `MatMulNBitsQuantizer(model).process()` (defaults: 4 bits, block 128).
- torchao int8 weight-only: `quantize_(module, Int8WeightOnlyConfig())` on the torch module, run eagerly;
  its size is the `torch.save` of its state dict.
- fp16: `onnxruntime.transformers.float16.convert_float_to_float16(model, keep_io_types=True)`.

Every result is measured the same way: size (bytes, % of the fp32 ONNX file), p50 latency at batch 1 on
the CPU (one intra-op thread for ONNX Runtime and torch alike, warm-up excluded), and fidelity on the same
256 held-out realistic inputs: cosine to the fp32 output (mean over samples), top-1 agreement (logits
models), and the accuracy retained robopt's gate computes (`tools.evaluation.evaluate`, the metric that
fits the output) against the fp32 ONNX model, which decides whether a result keeps the floor.

Verdict per model: robopt's pick against the smallest library result that keeps the floor; it passes
when it is no larger, its cosine is no more than 0.005 lower (top-1 no more than 0.5 point), and its p50
is at most 1.1x.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

EVAL_SEED = 1234
EVAL_SAMPLES = 256
CALIBRATION_BATCHES = 4
COSINE_SLACK = 0.005
TOP1_SLACK = 0.005
LATENCY_SLACK = 1.1


@dataclass
class Row:
    model: str
    method: str
    size_bytes: int
    size_percent: float
    p50_ms: float
    cosine: float
    top1: float | None
    retained: float
    metric: str
    keeps_floor: bool
    note: str = ""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            root.setLevel(level)


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _p50(run: Callable[[], Any], iterations: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean((a * b).sum(axis=1) / np.maximum(den, 1e-30)))


class Case:
    """One zoo model: its fp32 ONNX file, the evaluation and calibration inputs, the reference outputs."""

    def __init__(self, name: str, workdir: Path, floor: float, iterations: int) -> None:
        from evals.zoo import build, export_zoo
        from tools.handle import EvalData
        from tools.loading import load_model

        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.zoo = build(name)
        with _quiet():
            self.fp32 = export_zoo(self.zoo, "onnx", self.dir)
        self.fp32_bytes = self.fp32.stat().st_size
        self.floor = floor
        self.iterations = iterations
        self.eval_inputs = self.zoo.make_inputs(batch=EVAL_SAMPLES, seed=EVAL_SEED)
        self.one = self.zoo.make_inputs(batch=1, seed=EVAL_SEED + 1)
        self.calibration = [self.zoo.make_inputs(batch=8, seed=100 + i) for i in range(CALIBRATION_BATCHES)]
        self.reference_handle = load_model(self.fp32)
        self.eval_data = EvalData(inputs=self.eval_inputs)
        self.reference = _ort_session(self.fp32).run(None, self.eval_inputs)[0]
        from tools.evaluation import evaluate

        # The metric robopt's gate picks for this model's output; every row is scored with it.
        self.metric = evaluate(
            self.reference_handle, reference=self.reference_handle, data=self.eval_data
        ).metric

    @property
    def logits(self) -> bool:
        return self.zoo.output_kind == "logits"

    def fidelity(self, outputs: np.ndarray, candidate: Any) -> tuple[float, float | None, float, str]:
        from tools.evaluation import evaluate

        cosine = _cosine(outputs, self.reference)
        top1 = float(np.mean(outputs.argmax(-1) == self.reference.argmax(-1))) if self.logits else None
        result = evaluate(candidate, reference=self.reference_handle, data=self.eval_data, metric=self.metric)
        return cosine, top1, float(result.accuracy_retained), str(result.metric)

    def onnx_row(self, method: str, path: Path, note: str = "") -> Row:
        import onnx

        session = _ort_session(path)
        outputs = np.asarray(session.run(None, self.eval_inputs)[0], dtype=np.float32)
        p50 = _p50(lambda: session.run(None, self.one), self.iterations)
        # The file as ONNX Runtime runs it (robopt's upload checks would refuse, e.g., the fp16 converter's
        # unsorted graph, which the runtime accepts): scored with the fp32 model's signature.
        candidate = self.reference_handle.clone(model=onnx.load(str(path), load_external_data=False))
        cosine, top1, retained, metric = self.fidelity(outputs, candidate)
        size = path.stat().st_size
        return self._row(method, size, p50, cosine, top1, retained, metric, note)

    def _row(
        self,
        method: str,
        size: int,
        p50: float,
        cosine: float,
        top1: float | None,
        retained: float,
        metric: str,
        note: str,
    ) -> Row:
        return Row(
            model=self.name,
            method=method,
            size_bytes=int(size),
            size_percent=100.0 * size / self.fp32_bytes,
            p50_ms=p50,
            cosine=cosine,
            top1=top1,
            retained=retained,
            metric=metric,
            keeps_floor=retained + 1e-9 >= self.floor,
            note=note,
        )


# ------------------------------------------------------------------------------------------------
# The plain library calls.


def ort_dynamic(case: Case, out: Path, **kwargs: Any) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(case.fp32, out, **kwargs)
    return out


def ort_static(case: Case, out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(case.calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(case.fp32, out, Reader())
    return out


def ort_nbits(case: Case, out: Path) -> Path:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(case.fp32)))
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), False)
    return out


def ort_fp16(case: Case, out: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save_model(convert_float_to_float16(onnx.load(str(case.fp32)), keep_io_types=True), str(out))
    return out


def torchao_int8(case: Case) -> Row:
    import copy

    import torch
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    module = copy.deepcopy(case.zoo.module).eval()
    quantize_(module, Int8WeightOnlyConfig())
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    one = case.zoo.example_args(case.one)
    with torch.inference_mode():
        outputs = module(*case.zoo.example_args(case.eval_inputs)).float().numpy()
        p50 = _p50(lambda: module(*one), case.iterations)
    handle = case.reference_handle.clone(model=module, runtime="torch", format="state_dict")
    with torch.inference_mode():
        cosine, top1, retained, metric = case.fidelity(outputs, handle)
    return case._row(
        "torchao int8 weight-only", len(buffer.getvalue()), p50, cosine, top1, retained, metric, "torch eager"
    )


# ------------------------------------------------------------------------------------------------
# robopt


def robopt_pick(case: Case, size_target: float, preset: str) -> tuple[Row, dict[str, Any]]:
    from agents.local import optimize_local
    from tools.exporting import export
    from tools.loading import load_model

    handle = load_model(case.fp32)
    criteria = {
        "criteria_name": preset,
        "max_size_reduction_percent": size_target,
        "target_accuracy_threshold": case.floor,
        "device": "cpu",
    }
    started = time.time()
    outcome = optimize_local(handle, criteria, planner="rules")
    seconds = time.time() - started
    path = case.dir / "robopt.onnx"
    export(outcome.selected, "onnx", str(path))
    recipe = [
        {k: v for k, v in call.arguments.items() if v is not None} | {"tool": call.tool}
        for call in outcome.recipe
    ]
    trials = [
        {
            "calls": [c.arguments for c in t.calls],
            "status": t.status,
            "retained": (t.measurement or {}).get("accuracy_retained"),
            "size": (t.measurement or {}).get("size_bytes"),
        }
        for t in outcome.trials
    ]
    note = " + ".join(_short(c) for c in recipe) or "original"
    row = case.onnx_row("robopt (session pick)", path, note=note)
    return row, {"recipe": recipe, "trials": trials, "session_s": round(seconds, 1)}


def _short(call: dict[str, Any]) -> str:
    extras = [f"{k}={v}" for k, v in call.items() if k not in ("tool", "method")]
    return f"{call.get('method', call['tool'])}" + (f"({', '.join(extras)})" if extras else "")


# ------------------------------------------------------------------------------------------------


def run_model(
    name: str, workdir: Path, floor: float, size_target: float, iterations: int, preset: str
) -> tuple[list[Row], dict[str, Any]]:
    case = Case(name, workdir, floor, iterations)
    rows = [case.onnx_row("fp32 (ONNX export)", case.fp32)]
    libraries: list[tuple[str, Callable[[], Path]]] = [
        ("ORT quantize_dynamic", lambda: ort_dynamic(case, case.dir / "dyn.onnx")),
        (
            "ORT quantize_dynamic per_channel",
            lambda: ort_dynamic(case, case.dir / "dyn_pc.onnx", per_channel=True),
        ),
        ("ORT quantize_static QDQ", lambda: ort_static(case, case.dir / "static.onnx")),
        ("ORT MatMulNBits 4-bit", lambda: ort_nbits(case, case.dir / "nbits.onnx")),
        ("fp16 (keep_io_types)", lambda: ort_fp16(case, case.dir / "fp16.onnx")),
    ]
    for label, make in libraries:
        try:
            with _quiet():
                path = make()
            rows.append(case.onnx_row(label, path))
        except Exception as exc:  # noqa: BLE001 - a library call that fails is reported, not fatal
            rows.append(
                case._row(label, 0, float("nan"), float("nan"), None, 0.0, "-", f"failed: {exc}"[:80])
            )
            rows[-1].keeps_floor = False
    try:
        with _quiet():
            rows.append(torchao_int8(case))
    except Exception as exc:  # noqa: BLE001
        rows.append(
            case._row(
                "torchao int8 weight-only",
                0,
                float("nan"),
                float("nan"),
                None,
                0.0,
                "-",
                f"failed: {exc}"[:80],
            )
        )
        rows[-1].keeps_floor = False
    with _quiet():
        pick, detail = robopt_pick(case, size_target, preset)
    rows.append(pick)
    return rows, detail


def verdict(rows: list[Row]) -> tuple[str, Row | None]:
    pick = rows[-1]
    library = [r for r in rows[1:-1] if r.keeps_floor and r.size_bytes > 0]
    if not library:
        return (
            "PASS (no library result keeps the floor)" if pick.keeps_floor else "FAIL: misses the floor"
        ), None
    best = min(library, key=lambda r: r.size_bytes)
    problems = []
    if not pick.keeps_floor:
        problems.append("misses the floor")
    if pick.size_bytes > best.size_bytes:
        problems.append(f"{pick.size_percent - best.size_percent:+.1f} points larger")
    if pick.cosine < best.cosine - COSINE_SLACK:
        problems.append(f"cosine {pick.cosine - best.cosine:+.4f}")
    if pick.top1 is not None and best.top1 is not None and pick.top1 < best.top1 - TOP1_SLACK:
        problems.append(f"top-1 {100 * (pick.top1 - best.top1):+.1f} points")
    if pick.p50_ms > LATENCY_SLACK * best.p50_ms:
        problems.append(f"p50 {pick.p50_ms / best.p50_ms:.2f}x")
    return ("PASS" if not problems else "FAIL: " + ", ".join(problems)), best


def markdown(all_rows: dict[str, list[Row]], details: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"# robopt vs plain library calls ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; p50 at batch 1, one intra-op thread for every runtime. "
        f"Session: {args.preset}, {args.size_target:.0f}% size target, floor {args.floor}, "
        f"rules planner, cpu. Fidelity on {EVAL_SAMPLES} held-out inputs; 'retained' is robopt's gate "
        "metric against the fp32 ONNX model.",
        "",
        "| model | method | size (bytes) | % fp32 | p50 ms | cosine | top-1 | retained (metric) | floor |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, rows in all_rows.items():
        for r in rows:
            top1 = "-" if r.top1 is None else f"{r.top1:.3f}"
            method = r.method + (f" [{r.note}]" if r.note else "")
            lines.append(
                f"| {name} | {method} | {r.size_bytes} | {r.size_percent:.1f} | {r.p50_ms:.3f} | "
                f"{r.cosine:.4f} | {top1} | {r.retained:.3f} ({r.metric}) | "
                f"{'yes' if r.keeps_floor else 'no'} |"
            )
    lines += [
        "",
        "| model | smallest library result keeping the floor | robopt | verdict | session |",
        "|---|---|---|---|---|",
    ]
    for name, rows in all_rows.items():
        text, best = verdict(rows)
        pick = rows[-1]
        best_text = (
            "-"
            if best is None
            else f"{best.method}: {best.size_percent:.1f}%, cos {best.cosine:.4f}, {best.p50_ms:.3f} ms"
        )
        pick_text = f"{pick.size_percent:.1f}%, cos {pick.cosine:.4f}, {pick.p50_ms:.3f} ms"
        lines.append(
            f"| {name} | {best_text} | {pick_text} | {text} | {details[name]['session_s']} s, "
            f"{len(details[name]['trials'])} trials |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from evals.zoo import ZOO_MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO_MODELS))
    parser.add_argument("--floor", type=float, default=0.97)
    parser.add_argument("--size-target", type=float, default=75.0)
    parser.add_argument(
        "--preset",
        default="max_compression",
        help="the session's criteria preset (max_compression: as small as the floor allows, the question "
        "this bench asks; balanced_optimization also pays for speed and accuracy above the floor)",
    )
    parser.add_argument("--iterations", type=int, default=200, help="timed runs per p50")
    parser.add_argument("--json", type=Path, default=None, help="also write rows and session details here")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the files here (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    all_rows: dict[str, list[Row]] = {}
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="robopt-vs-") as tmp:
        workdir = args.workdir or Path(tmp)
        for name in args.models.split(","):
            rows, detail = run_model(
                name, workdir, args.floor, args.size_target, args.iterations, args.preset
            )
            all_rows[name], details[name] = rows, detail
            print(f"{name}: {verdict(rows)[0]}", file=sys.stderr, flush=True)
    report = markdown(all_rows, details, args)
    print(report)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"rows": {k: [asdict(r) for r in v] for k, v in all_rows.items()}, "sessions": details},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
