"""What the registry needs from the toolbox: format checks and the input signature, run in threads."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.errors import DataMismatchError, InvalidModelError, ToolError
from tools.formats import (
    EVAL_DATA_EXTENSIONS,
    MODEL_EXTENSIONS,
    FormatReport,
    validate_eval_data,
    validate_upload,
)
from tools.handle import ArchitectureRef, EvalData, InputSpec

log = logging.getLogger("robopt.models")

__all__ = [
    "EVAL_DATA_EXTENSIONS",
    "MODEL_EXTENSIONS",
    "FormatReport",
    "ToolError",
    "check_model_file",
    "check_eval_data",
    "probe_input_spec",
    "ProbedSignature",
    "RUNNABLE_FORMATS",
    "WEIGHTS_ONLY_FORMATS",
]

# Formats whose weights alone do not define a network: they need an architecture to be run.
WEIGHTS_ONLY_FORMATS = {"state_dict", "safetensors"}
# Formats a session can load and run.
RUNNABLE_FORMATS = ("onnx", "torchscript", "pt2", "state_dict", "safetensors", "hf_directory")


def check_model_file(path: Path, extension: str) -> FormatReport:
    return validate_upload(path, extension)


def check_eval_data(path: Path, extension: str) -> EvalData:
    return validate_eval_data(path, extension)


@dataclass
class ProbedSignature:
    """The signature a model file gives (None when it gives none) and how it was found."""

    inputs: list[InputSpec] | None
    info: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] | None = None  # tools.evaluation.output_specs of one forward pass


def probe_input_spec(
    path: Path,
    report: FormatReport,
    architecture: ArchitectureRef | None,
    given: list[InputSpec] | None = None,
    eval_data: EvalData | None = None,
) -> ProbedSignature:
    """The model's input signature, by loading it (no code from the file runs: formats checked first).

    `given` (the user's input_signature) is checked against the graph; `eval_data` defines the
    signature of a model that states none. The model runs once on its signature: that gives its
    outputs (names, shapes, kinds), and a signature it cannot take is refused now, not by a session.
    Raises ToolError when a runnable model cannot be loaded or run; a weights-only file without an
    architecture is stored without a signature instead.
    """
    if not report.loadable:
        return ProbedSignature(None)
    from tools.loading import load_model

    try:
        handle = load_model(path, architecture=architecture, inputs=given, eval_data=eval_data)
    except ToolError:
        if report.format in WEIGHTS_ONLY_FORMATS and architecture is None:
            log.info("weights-only upload without an architecture: stored without an input signature")
            return ProbedSignature(None)
        raise
    except Exception as exc:  # a file that passed the checks but that its library cannot load
        log.warning("model passed the format checks but failed to load: %s", exc, exc_info=True)
        raise InvalidModelError(f"the {report.format} model could not be loaded: {exc}") from exc
    meta = handle.metadata
    info = {
        "source": meta.get("signature_source"),
        "missing": meta.get("signature_missing") or [],
        "notes": meta.get("signature_notes") or [],
        "input_names": meta.get("input_names"),
    }
    if not handle.inputs:
        return ProbedSignature(None, info)
    _check_probe_size(list(handle.inputs))
    from tools.evaluation import output_specs

    # One forward pass: the outputs it gives are stored (a metric is checked against them at
    # /optimize), and a signature the model cannot take is refused here, not by a session.
    try:
        outputs = output_specs(handle)
    except DataMismatchError as exc:
        raise DataMismatchError(
            f"the model does not run with the input signature {[s.model_dump() for s in handle.inputs]}",
            details=exc.details,
        ) from exc
    return ProbedSignature(list(handle.inputs), info, outputs)


# The probe's synthesized inputs (batch 1, dynamic axes 16) may take at most this much memory. A
# declared input of [2^31, 2^31, 4] floats was a 500 (numpy refused the allocation): found by the
# hostile corpus (tests/corpus/make_corpus.py, onnx_absurd_input).
MAX_PROBE_INPUT_BYTES = 1 << 30


def _check_probe_size(specs: list[InputSpec]) -> None:
    total = 0
    for spec in specs:
        elements = 1
        for i, d in enumerate(spec.shape):
            elements *= (1 if i == 0 else 16) if d is None else max(int(d), 0)
        total += elements * 8  # the widest dtype: an upper bound without a dtype table
    if total > MAX_PROBE_INPUT_BYTES:
        raise InvalidModelError(
            f"the model declares inputs of {total // 8} elements; one sample would need more than "
            f"{MAX_PROBE_INPUT_BYTES >> 20} MiB",
            details={"inputs": [s.model_dump() for s in specs]},
        )


def report_details(report: FormatReport) -> dict[str, Any]:
    return report.model_dump(mode="json", exclude={"format", "extension", "size_bytes", "inputs"})
