"""Command line of the eval harness.

python -m evals run --suite smoke --out eval-out                 # rules planner, CPU cases
python -m evals run --suite smoke --planner llm --record DIR     # configured provider, recorded
python -m evals run --suite smoke --planner recorded             # replay evals/recordings/<case>.jsonl
python -m evals run --suite smoke --planner llm --mock-llm --record DIR
                                                # the LLM planner against the local scripted mock
python -m evals run --suite gpu --out DIR                        # openvla-7b-shape on CUDA
python -m evals build [NAME ...]                                 # build/cache reference models
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

RECORDINGS_DIR = Path(__file__).resolve().parent / "recordings"


def _data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from state.settings import get_settings

    return Path(get_settings().data_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals", description="robopt offline eval harness")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite and write report.md, results.json and plots")
    run.add_argument("--suite", default="smoke", choices=["tiny", "smoke", "full", "gpu"])
    run.add_argument("--planner", default="rules", choices=["rules", "llm", "recorded"])
    run.add_argument("--out", default="eval-out", type=Path)
    run.add_argument("--data-dir", default=None, help="reference cache root (default: DATA_DIR)")
    run.add_argument("--case", action="append", help="run only this case (repeatable)")
    run.add_argument("--strict", action="store_true", help="exit 1 when a case misses issue 5's acceptance")
    run.add_argument("--record", type=Path, default=None, help="with --planner llm: save replies to DIR")
    run.add_argument("--recordings", type=Path, default=RECORDINGS_DIR, help="with --planner recorded")
    run.add_argument(
        "--mock-llm",
        action="store_true",
        help="with --planner llm: use the local scripted mock server instead of LLM_* settings",
    )
    build = sub.add_parser("build", help="build and cache reference models")
    build.add_argument("names", nargs="*")
    build.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    if args.command == "build":
        from evals.reference import REFERENCES, ensure_reference

        for name in args.names or list(REFERENCES):
            t = time.perf_counter()
            path = ensure_reference(name, _data_dir(args.data_dir))
            print(f"{name}: {path} ({time.perf_counter() - t:.1f} s)")
        return 0

    if args.suite == "gpu":
        from evals.gpu_suite import run_gpu_suite

        return run_gpu_suite(args.out, planner=args.planner)

    from evals.harness import PlannerSetup, run_suite

    if args.record is not None and args.planner != "llm":
        parser.error("--record needs --planner llm")
    if args.mock_llm and args.planner != "llm":
        parser.error("--mock-llm needs --planner llm")
    setup = PlannerSetup(args.planner, record_dir=args.record, recordings_dir=args.recordings)
    start = time.perf_counter()
    if args.mock_llm:
        from evals.mock_llm import MOCK_MODEL, PROVENANCE, ScriptedLLMServer

        with ScriptedLLMServer() as server:
            os.environ.update(LLM_MODEL=MOCK_MODEL, LLM_API_BASE=server.base_url, LLM_API_KEY="mock")
            setup.provenance = PROVENANCE
            from state.settings import get_settings

            get_settings.cache_clear()
            results = run_suite(args.suite, setup, args.out, _data_dir(args.data_dir), only=args.case)
    else:
        results = run_suite(args.suite, setup, args.out, _data_dir(args.data_dir), only=args.case)
    print((args.out / "report.md").read_text())
    failed = [r.verdict.case for r in results if r.verdict is not None and not r.verdict.passed]
    print(f"wrote {args.out}/report.md, results.json, plots in {time.perf_counter() - start:.1f} s")
    if failed:
        print(f"acceptance not met on: {', '.join(failed)} (see report.md)")
        return 1 if args.strict else 0
    return 0
