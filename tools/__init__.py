"""Deterministic tools on model artifacts.

    from tools import load_model, inspect_model, quantize, prune, distill, benchmark, evaluate, export
    from tools import compile_model  # a decoder's static-KV-cache runtime, compiled (tools.compiling)

Every tool takes a `ModelHandle` and returns a new one (or a measurement); inputs are never changed.
Modules are named for what they hold (`tools.quantization` defines `quantize`), so no submodule
shadows a function. Names are imported on first use (PEP 562), so `import tools.errors` stays cheap:
the API process imports no torch until a tool runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "load_model": "tools.loading",
    "inspect_model": "tools.profile",
    "ModelProfile": "tools.profile",
    "quantize": "tools.quantization",
    "prune": "tools.pruning",
    "distill": "tools.distillation",
    "compile_model": "tools.compiling",
    "DecodeRuntime": "tools.decode_runtime",
    "load_runtime": "tools.decode_runtime",
    "TrainingReport": "tools.distillation",
    "benchmark": "tools.benchmarking",
    "BenchmarkResult": "tools.benchmarking",
    "evaluate": "tools.evaluation",
    "EvalResult": "tools.evaluation",
    "export": "tools.exporting",
    "serialized_size": "tools.exporting",
    "export_hf_directory": "tools.exporting",
    "load_openvla_directory": "tools.openvla_layout",
    "validate_upload": "tools.formats",
    "validate_eval_data": "tools.formats",
    "FormatReport": "tools.formats",
    "ModelHandle": "tools.handle",
    "InputSpec": "tools.handle",
    "ArchitectureRef": "tools.handle",
    "EvalData": "tools.handle",
    "ToolError": "tools.errors",
    "UnknownMethodError": "tools.errors",
    "InvalidArgumentError": "tools.errors",
    "UnsupportedDeviceError": "tools.errors",
    "UnsupportedFormatError": "tools.errors",
    "UnsafeModelError": "tools.errors",
    "InvalidModelError": "tools.errors",
    "DataMismatchError": "tools.errors",
    "DependencyMissingError": "tools.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tools' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
