"""The canary the hostile pickles call: each entry point writes a marker file when it runs.

Importable by the test process and by the server alike (both run from the repository root), so a
marker that stays absent after an upload shows the server never unpickled the payload.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _mark(marker: Any) -> None:
    if marker:
        Path(str(marker)).write_text("payload ran\n")


class Canary:
    """Writes its marker when created (INST, OBJ, NEWOBJ, NEWOBJ_EX) or given state (BUILD)."""

    def __new__(cls, marker: Any = None, **kwargs: Any) -> Canary:
        _mark(marker or kwargs.get("marker"))
        return super().__new__(cls)

    def __init__(self, marker: Any = None, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: dict[str, Any]) -> None:
        _mark(state.get("marker"))
