"""What the registry needs from the toolbox: format checks and the input signature, run in threads."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tools.errors import InvalidModelError, ToolError
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
]

# Formats whose weights alone do not define a network: they need an architecture to be run.
WEIGHTS_ONLY_FORMATS = {"state_dict", "safetensors"}


def check_model_file(path: Path, extension: str) -> FormatReport:
    return validate_upload(path, extension)


def check_eval_data(path: Path, extension: str) -> EvalData:
    return validate_eval_data(path, extension)


def probe_input_spec(
    path: Path, report: FormatReport, architecture: ArchitectureRef | None
) -> list[InputSpec] | None:
    """The model's input signature, by loading it (no code from the file runs: formats checked first).

    Raises ToolError when a runnable model cannot be loaded; a weights-only file without an
    architecture that cannot be loaded is stored without a signature instead (None).
    """
    if not report.loadable:
        return None
    if report.inputs and architecture is None:
        return list(report.inputs)
    from tools.loading import load_model

    try:
        handle = load_model(path, architecture=architecture)
    except ToolError:
        if report.format in WEIGHTS_ONLY_FORMATS and architecture is None:
            log.info("weights-only upload without an architecture: stored without an input signature")
            return None
        raise
    except Exception as exc:  # a file that passed the checks but that its library cannot load
        log.warning("model passed the format checks but failed to load: %s", exc, exc_info=True)
        raise InvalidModelError(f"the {report.format} model could not be loaded: {exc}") from exc
    # A TorchScript file from elsewhere may not state its inputs: then there is no signature to store.
    return list(handle.inputs) or None


def report_details(report: FormatReport) -> dict[str, Any]:
    return report.model_dump(mode="json", exclude={"format", "extension", "size_bytes", "inputs"})
