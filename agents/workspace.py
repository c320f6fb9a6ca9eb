"""Where a session's models live while it runs: loaded handles, version artifacts, recipe replay.

The graph state names versions; this object turns a version into a runnable handle. Handles are
cached in memory (the original, the current version, the latest candidate); any other version is
rebuilt by replaying its recipe of validated tool calls on the original, which is exact because
every tool is deterministic (seeded). That is also how a session resumes after a crash.

Each candidate is also written to the artifact store (DATA_DIR/artifacts/<session>/<version>/) in a
format a user can download and load again: the uploaded format wherever it can hold the version
(.pt2 for .pt2, TorchScript for TorchScript, ONNX for ONNX, a transformers directory for a model
uploaded as one, plus its ONNX export), another one, said so, only when a technique needs another
runtime or the uploaded format refuses it (see `Workspace.save`). `artifact.json` says which runtime
each download needs.
Every method here is blocking (compute, disk): call it through asyncio.to_thread.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agents.state import BASELINE_VERSION, ToolCall, VersionRecord


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
        on_saved: Callable[[str, Path], None] | None = None,
    ) -> None:
        if source is None and original is None:
            raise ValueError("a workspace needs a model source or a loaded handle")
        self.source = source
        self._original = original
        self.artifacts_dir = artifacts_dir
        self.device = device
        self.on_saved = on_saved  # (version id, its folder) once written: the runner publishes it
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

    def cached(self, version_id: str) -> Any | None:
        """The version's handle if it is at hand (the original always is), else None: nothing is rebuilt."""
        if version_id == BASELINE_VERSION:
            return self.original()
        return self._cache.get(version_id)

    def replay(self, calls: list[ToolCall]) -> Any:
        handle = self.original()
        for call in calls:
            handle = run_call(handle, call, teacher=self.original())
        return handle

    def apply(self, base: VersionRecord, calls: list[ToolCall]) -> Any:
        handle = self.handle(base)
        for call in calls:
            handle = run_call(handle, call, teacher=self.original())
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
        from tools.exporting import FrozenTraceError, export, export_hf_directory

        directory = self.artifacts_dir / version_id
        directory.mkdir(parents=True, exist_ok=True)
        source = self._source_format(handle)
        if handle.runtime == "onnx":
            attempts = [("onnx", "model.onnx")]
        else:
            torch_formats = {"torchscript": ("torchscript", "model.pt"), "pt2": ("pt2", "model.pt2")}
            first = [torch_formats[source]] if source in torch_formats else []
            if source == "hf_directory":
                first = [("hf_directory", HF_DIRECTORY)]
            attempts = [
                *first,
                *(f for k, f in torch_formats.items() if f not in first),
                ("torch_module", "module.pt"),
            ]
        reasons: list[str] = []
        for fmt, name in attempts:
            destination = directory / name
            tmp = directory / f".tmp-{name}"
            written: dict[str, Any] = {}
            try:
                _remove(tmp)
                if fmt == "torch_module":
                    import torch

                    torch.save(handle.model, tmp)
                elif fmt == "hf_directory":
                    written = export_hf_directory(handle, tmp)
                else:
                    export(handle, fmt, tmp)
                    if fmt == "onnx" and onnx_data_path(tmp).exists():
                        # A graph over 2 GiB keeps its weights in one external data file beside it.
                        _remove(onnx_data_path(destination))
                        onnx_data_path(tmp).replace(onnx_data_path(destination))
                        _point_external_data(tmp, onnx_data_path(destination).name)
                _remove(destination)
                tmp.replace(destination)
            except Exception as err:  # noqa: BLE001 - every format's failure is reported together
                _remove(tmp)
                if isinstance(err, FrozenTraceError) and fmt == source:
                    # The upload's own format would hold a size the original leaves free: another format
                    # of the same graph holds it too, so the candidate is not deliverable.
                    raise ArtifactSaveError(f"the candidate could not be saved as {fmt}: {err}") from err
                reasons.append(_reason(fmt, err))
                continue
            info = artifact_info(source, fmt, handle.recipe, reasons)
            info["runtime"] = written.get("runtime") or runtime_of(fmt, destination)
            info["downloads"] = {fmt: {"path": name, "runtime": info["runtime"], **_download_extra(written)}}
            if source == "hf_directory" and fmt != "onnx":
                info.update(self._save_onnx_form(handle, directory))
            (directory / ARTIFACT_INFO).write_text(json.dumps(info, indent=1))
            if self.on_saved is not None:
                self.on_saved(version_id, directory)
            return str(destination), fmt
        raise ArtifactSaveError("the candidate could not be saved in any format (" + "; ".join(reasons) + ")")

    def _save_onnx_form(self, handle: Any, directory: Path) -> dict[str, Any]:
        """The ONNX export offered beside a transformers directory (ONNX_FORM/model.onnx, with its
        external data file above 2 GiB), or why there is none."""
        from tools.exporting import export

        folder, tmp = directory / ONNX_FORM, directory / f".tmp-{ONNX_FORM}"
        _remove(folder)
        _remove(tmp)
        try:
            tmp.mkdir(parents=True)
            export(handle, "onnx", tmp / "model.onnx")
            _check_onnx_runs(handle, tmp / "model.onnx")
            tmp.replace(folder)
        except Exception as err:  # noqa: BLE001 - the directory stays the download; the reason is kept
            _remove(tmp)
            # Users read the reason: no server paths in it.
            return {"onnx_unavailable": _reason("onnx", err).replace(f"{tmp}/", "").replace(str(tmp), "")}
        external = onnx_data_path(folder / "model.onnx").exists()
        runtime = runtime_of("onnx", folder / "model.onnx")
        return {
            "onnx": {
                "path": f"{ONNX_FORM}/model.onnx",
                "runtime": runtime,
                "external_data": f"{ONNX_FORM}/{onnx_data_path(folder / 'model.onnx').name}"
                if external
                else None,
            }
        }

    def _source_format(self, handle: Any) -> str:
        """The uploaded model's format (the original handle's), else the handle's own."""
        original = self._original if self._original is not None else handle
        return str(getattr(original, "format", None) or handle.format)


ARTIFACT_INFO = "artifact.json"
HF_DIRECTORY = "model"  # a transformers directory's folder in a version's artifacts
ONNX_FORM = "onnx"  # the folder of the ONNX form offered beside it
_SOURCE_FORMATS = {
    "torchscript": "TorchScript",
    "pt2": ".pt2 (torch.export)",
    "onnx": "ONNX",
    "hf_directory": "Hugging Face transformers directory",
}


def onnx_data_path(path: Path) -> Path:
    from tools.exporting import onnx_data_file

    return onnx_data_file(path)


def runtime_of(fmt: str, path: Path | None = None) -> str:
    """The runtime a download in `fmt` needs, with the versions it was written with."""
    import torch

    torch_version = torch.__version__.split("+")[0]
    if fmt == "onnx":
        opset = None
        if path is not None and path.is_file():
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        return "onnxruntime" + (f" (ONNX opset {opset})" if opset else "")
    if fmt == "torchscript":
        return f"torch>={torch_version} (torch.jit.load)"
    if fmt == "pt2":
        return f"torch>={torch_version} (torch.export.load(path).module())"
    if fmt == "hf_directory":
        import transformers

        return f"transformers>={transformers.__version__}"
    return "robopt's own server (a pickled module, not offered for download)"


def _check_onnx_runs(handle: Any, path: Path) -> None:
    """The ONNX form is offered only when ONNX Runtime loads it and it gives the version's outputs."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from tools.exporting import example_inputs
    from tools.runtime import to_tensors

    data = example_inputs(handle)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: data[i.name] for i in session.get_inputs()}
    got = session.run(None, feed)
    with torch.inference_mode():
        out = handle.model(*to_tensors(handle, data))
    want = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, tuple) else [out]
    w = np.asarray(want[0].float().cpu().numpy(), dtype=np.float64).ravel()
    g = np.asarray(got[0], dtype=np.float64).ravel()
    cosine = float(w @ g / max(np.linalg.norm(w) * np.linalg.norm(g), 1e-12)) if w.shape == g.shape else -1.0
    if cosine < 0.999:
        raise ValueError(f"the ONNX export gives other outputs than the version (cosine {cosine:.4f})")


def _download_extra(written: dict[str, Any]) -> dict[str, Any]:
    keys = ("model_class", "dtype", "quantization", "load_with")
    return {k: written[k] for k in keys if written.get(k) is not None}


def _reason(fmt: str, err: Exception) -> str:
    detail = getattr(err, "message", None) or str(err) or type(err).__name__
    return f"{fmt}: {type(err).__name__}: {detail}"[:400]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _point_external_data(path: Path, location: str) -> None:
    """Rewrite an ONNX graph's external-data references to `location` (its data file was renamed)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(path))


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
        if any((s.get("result") or {}).get("session_config") for s in recipe):
            note += (
                " and the session option session.disable_quant_qdq=1 (named in the graph's metadata "
                "'onnxruntime.session_config'): it folds the int8 weights into float at load; without it "
                "the runtime dequantizes them at every call"
            )
    else:
        why = "; ".join(reasons) or "it cannot hold this version"
        note = f"downloaded as {_SOURCE_FORMATS.get(fmt, fmt)}, not the uploaded {name}: {why}"
    info.update(converted=True, note=note[:1000])
    return info


class ArtifactSaveError(RuntimeError):
    """No artifact format could hold this candidate."""


def run_call(handle: Any, call: ToolCall, *, teacher: Any = None) -> Any:
    """Validate one call against the registry's schema and run it; `teacher` (the original model) is what
    recovery steps (distill, quantize with recovery='qat') learn from."""
    from tools.registry import run_tool, validate_call

    args: BaseModel = validate_call(call.tool, call.arguments)
    return run_tool(call.tool, handle, args, teacher=teacher)
