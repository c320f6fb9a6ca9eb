"""Where a session's models live while it runs: loaded handles, version artifacts, recipe replay.

The graph state names versions; this object turns a version into a runnable handle. Handles are
cached in memory (the original, the current version, the latest candidate); any other version is
rebuilt by replaying its recipe of validated tool calls on the original, which is exact because
every tool is deterministic (seeded). That is also how a session resumes after a crash.

Each candidate is also written to the artifact store (DATA_DIR/artifacts/<session>/<version>/) in a
format a user can download and load again: the uploaded format wherever it can hold the version
(.pt2 for .pt2, TorchScript for TorchScript, ONNX for ONNX), another one, said so, only when a
technique needs another runtime or the uploaded format refuses it (see `Workspace.save`).
Every method here is blocking (compute, disk): call it through asyncio.to_thread.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agents.state import ToolCall, VersionRecord


@dataclass
class ModelSource:
    path: Path
    architecture: dict[str, Any] | None = None
    eval_data: Path | None = None
    inputs: list[dict[str, Any]] | None = None  # the signature stored for the model or given for the session
    name: str = ""
    description: str = ""


class Workspace:
    def __init__(
        self,
        *,
        source: ModelSource | None = None,
        original: Any = None,  # a ModelHandle, when the caller already has one (optimize_local)
        artifacts_dir: Path | None = None,
        device: str = "cpu",
    ) -> None:
        if source is None and original is None:
            raise ValueError("a workspace needs a model source or a loaded handle")
        self.source = source
        self._original = original
        self.artifacts_dir = artifacts_dir
        self.device = device
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- handles -----------------------------------------------------------------------------

    def original(self) -> Any:
        with self._lock:
            if self._original is None:
                from tools.loading import load_model

                assert self.source is not None
                handle = load_model(
                    self.source.path,
                    architecture=self.source.architecture,
                    eval_data=self.source.eval_data,
                    inputs=self.source.inputs,
                )
                self._original = handle
            if self._original.device != self.device and self._original.runtime == "torch":
                self._original = self._to_device(self._original)
            return self._original

    def _to_device(self, handle: Any) -> Any:
        model = handle.model
        if hasattr(model, "to"):
            model = model.to(self.device)
        return handle.clone(model=model, device=self.device)

    def handle(self, version: VersionRecord) -> Any:
        """A runnable handle for `version` (cached, or rebuilt from its recipe)."""
        cached = self._cache.get(version.id)
        if cached is not None:
            return cached
        handle = self.replay(version.recipe)
        self._cache[version.id] = handle
        return handle

    def replay(self, calls: list[ToolCall]) -> Any:
        handle = self.original()
        for call in calls:
            handle = run_call(handle, call)
        return handle

    def apply(self, base: VersionRecord, calls: list[ToolCall]) -> Any:
        handle = self.handle(base)
        for call in calls:
            handle = run_call(handle, call)
        return handle

    def remember(self, version_id: str, handle: Any, keep: set[str]) -> None:
        """Cache `handle` as `version_id`, dropping cached versions not in `keep` (memory)."""
        self._cache[version_id] = handle
        for key in list(self._cache):
            if key not in keep and key != version_id:
                del self._cache[key]

    # -- artifacts ---------------------------------------------------------------------------

    def save(self, version_id: str, handle: Any) -> tuple[str | None, str | None]:
        """Write the version's downloadable artifact; (path, format), or (None, None) without a store.

        The download keeps the upload's contract: it is written in the uploaded format wherever that
        format can hold the version (a .pt2 upload gives a .pt2, TorchScript gives TorchScript, ONNX
        gives ONNX; tools.exporting keeps the input and output dtypes of half-precision versions). An
        ONNX handle (a technique that runs in ONNX Runtime) is saved as ONNX. When the uploaded format
        cannot hold it, the next format that can is used: TorchScript, a `torch.export` program, else
        the server's own pickle of the module (kept for the server, not offered for download). Weights
        uploads (state dicts) are saved as TorchScript, else .pt2. `artifact.json` beside the file says
        which format was written, the upload's, and why they differ. Raises ArtifactSaveError with every
        format's reason when nothing could be written: the caller turns that into a failed trial.
        """
        if self.artifacts_dir is None:
            return None, None
        from tools.exporting import export

        directory = self.artifacts_dir / version_id
        directory.mkdir(parents=True, exist_ok=True)
        source = self._source_format(handle)
        if handle.runtime == "onnx":
            attempts = [("onnx", "model.onnx")]
        else:
            torch_formats = {"torchscript": ("torchscript", "model.pt"), "pt2": ("pt2", "model.pt2")}
            first = [torch_formats[source]] if source in torch_formats else []
            attempts = [
                *first,
                *(f for k, f in torch_formats.items() if f not in first),
                ("torch_module", "module.pt"),
            ]
        reasons: list[str] = []
        for fmt, name in attempts:
            destination = directory / name
            tmp = directory / f".tmp-{name}"
            try:
                if fmt == "torch_module":
                    import torch

                    torch.save(handle.model, tmp)
                else:
                    export(handle, fmt, tmp)
                tmp.replace(destination)
            except Exception as err:  # noqa: BLE001 - every format's failure is reported together
                tmp.unlink(missing_ok=True)
                detail = getattr(err, "message", None) or str(err) or type(err).__name__
                reasons.append(f"{fmt}: {type(err).__name__}: {detail}"[:400])
                continue
            info = artifact_info(source, fmt, handle.recipe, reasons)
            (directory / ARTIFACT_INFO).write_text(json.dumps(info, indent=1))
            return str(destination), fmt
        raise ArtifactSaveError("the candidate could not be saved in any format (" + "; ".join(reasons) + ")")

    def _source_format(self, handle: Any) -> str:
        """The uploaded model's format (the original handle's), else the handle's own."""
        original = self._original if self._original is not None else handle
        return str(getattr(original, "format", None) or handle.format)


ARTIFACT_INFO = "artifact.json"
_SOURCE_FORMATS = {"torchscript": "TorchScript", "pt2": ".pt2 (torch.export)", "onnx": "ONNX"}


def artifact_info(source: str, fmt: str, recipe: list[dict[str, Any]], reasons: list[str]) -> dict[str, Any]:
    """What was written for a version and, when it is not the uploaded format, why."""
    info: dict[str, Any] = {"artifact_format": fmt, "source_format": source, "converted": False}
    if fmt == source or source not in _SOURCE_FORMATS:
        return info
    name = _SOURCE_FORMATS[source]
    onnx_steps = [
        f"{s.get('tool')}({s.get('method')})"
        for s in recipe
        if (s.get("result") or {}).get("exported_to_onnx")
    ]
    if fmt == "onnx" and onnx_steps:
        note = (
            f"downloaded as ONNX, not the uploaded {name}: {', '.join(onnx_steps)} runs in ONNX Runtime, so "
            "the model was exported to ONNX; run it with onnxruntime.InferenceSession"
        )
    else:
        why = "; ".join(reasons) or "it cannot hold this version"
        note = f"downloaded as {_SOURCE_FORMATS.get(fmt, fmt)}, not the uploaded {name}: {why}"
    info.update(converted=True, note=note[:1000])
    return info


class ArtifactSaveError(RuntimeError):
    """No artifact format could hold this candidate."""


def run_call(handle: Any, call: ToolCall) -> Any:
    """Validate one call against the registry's schema and run it."""
    from tools.registry import run_tool, validate_call

    args: BaseModel = validate_call(call.tool, call.arguments)
    return run_tool(call.tool, handle, args)
