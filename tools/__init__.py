"""Deterministic tools on model artifacts.

    from tools import load_model, inspect_model, quantize, prune, benchmark, evaluate, export

Every tool takes a `ModelHandle` and returns a new one (or a measurement); inputs are never changed.
Names are imported on first use, so `import tools.errors` stays cheap (no torch import).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_EXPORTS: dict[str, str] = {
    "load_model": "tools.loading",
    "inspect_model": "tools.profile",
    "ModelProfile": "tools.profile",
    "quantize": "tools.quantize",
    "prune": "tools.prune",
    "benchmark": "tools.benchmark",
    "BenchmarkResult": "tools.benchmark",
    "evaluate": "tools.evaluate",
    "EvalResult": "tools.evaluate",
    "export": "tools.export",
    "serialized_size": "tools.export",
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


class _ToolsPackage(types.ModuleType):
    """Keeps `tools.quantize` & co. the functions after their same-named submodules are imported.

    Importing `tools.quantize` makes Python bind the submodule as the package's `quantize`
    attribute, which would shadow the function for every later `from tools import quantize`.
    Submodules stay reachable through `importlib.import_module("tools.quantize")`.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _ToolsPackage
