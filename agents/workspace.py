"""Where a session's models live while it runs: loaded handles, version artifacts, recipe replay.

The graph state names versions; this object turns a version into a runnable handle. Handles are
cached in memory (the original, the current version, the latest candidate); any other version is
rebuilt by replaying its recipe of validated tool calls on the original, which is exact because
every tool is deterministic (seeded). That is also how a session resumes after a crash.

Each candidate is also written to the artifact store (DATA_DIR/artifacts/<session>/<version>/) in a
format a user can download and load again: TorchScript for torch models (a torch.export .pt2 program
when TorchScript refuses, e.g. torchao-quantized weights), ONNX for ONNX models.
Every method here is blocking (compute, disk): call it through asyncio.to_thread.
"""

from __future__ import annotations

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

        ONNX models are saved as ONNX. Torch models as TorchScript when they script or trace, else as
        a `torch.export` program (.pt2: what torchao tensor-subclass weights need; it loads back through
        the normal loader and can be uploaded again), else as the server's own pickle of the module
        (kept for the server, not offered for download). Raises ArtifactSaveError with every
        format's reason when nothing could be written: the caller turns that into a failed trial.
        """
        if self.artifacts_dir is None:
            return None, None
        from tools.exporting import export

        directory = self.artifacts_dir / version_id
        directory.mkdir(parents=True, exist_ok=True)
        if handle.runtime == "onnx":
            attempts = [("onnx", "model.onnx")]
        else:
            attempts = [("torchscript", "model.pt"), ("pt2", "model.pt2"), ("torch_module", "module.pt")]
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
            return str(destination), fmt
        raise ArtifactSaveError("the candidate could not be saved in any format (" + "; ".join(reasons) + ")")


class ArtifactSaveError(RuntimeError):
    """No artifact format could hold this candidate."""


def run_call(handle: Any, call: ToolCall) -> Any:
    """Validate one call against the registry's schema and run it."""
    from tools.registry import run_tool, validate_call

    args: BaseModel = validate_call(call.tool, call.arguments)
    return run_tool(call.tool, handle, args)
