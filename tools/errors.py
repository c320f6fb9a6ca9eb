"""Typed errors of the toolbox. Each carries a message an API can show to a user as it is."""

from __future__ import annotations


class ToolError(Exception):
    """Base class. `code` is a stable machine-readable name; `str(err)` is the user-facing message."""

    code = "tool_error"

    def __init__(self, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class UnknownMethodError(ToolError):
    code = "unknown_method"


class InvalidArgumentError(ToolError):
    """An argument out of its range or of the wrong kind (amount=1.5, batch_size=0)."""

    code = "invalid_argument"


class UnsupportedDeviceError(ToolError):
    """The method needs a device this machine lacks (int4 weight-only or 2:4 sparsity on CPU)."""

    code = "unsupported_device"


class UnsupportedFormatError(ToolError):
    """The tool cannot handle this model format (a TensorFlow `.pb`, a Keras `.h5`)."""

    code = "unsupported_format"


class UnsafeModelError(ToolError):
    """The file would need code to load (a pickle with globals, Keras Lambda layers, external data)."""

    code = "unsafe_model"


class InvalidModelError(ToolError):
    """The file is truncated, corrupt, or its content does not match its extension."""

    code = "invalid_model"


class DataMismatchError(ToolError):
    """Evaluation or benchmark data that does not match the model's input signature."""

    code = "data_mismatch"


class DependencyMissingError(ToolError):
    """An optional library a method needs (bitsandbytes, torchao) is not importable here."""

    code = "dependency_missing"
