"""`ModelHandle`: a loaded model plus what the tools need to know about it.

Every tool takes a handle and returns a new one; the input is never modified (`clone` deep-copies
the runnable model). `recipe` records the transforms applied since loading, so the steps that
produced a version can be replayed.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

ModelFormat = Literal["onnx", "torchscript", "pt2", "state_dict", "safetensors", "hf_directory"]
Runtime = Literal["torch", "onnx"]


class InputSpec(BaseModel):
    """One model input. A `None` in `shape` is a dynamic axis (batch, sequence)."""

    name: str
    shape: list[int | None]
    dtype: str = "float32"
    # Integer inputs (token ids) are synthesized in [low, high).
    low: float | None = None
    high: float | None = None


class ArchitectureRef(BaseModel):
    """A registered architecture and its config, for state dicts (see tools.architectures)."""

    name: str
    config: dict[str, Any] = Field(default_factory=dict)


# A model trained on its own evaluation data (distillation, quantization-aware training) trains on one
# half of it and is measured on the other (`EvalData.halves`); its handle's metadata says so.
TRAINED_ON_EVAL_DATA = "trained_on_eval_data"
HOLD_OUT_MIN_SAMPLES = 64  # below this, halves would be too small to measure on: nothing is held out


@dataclass
class EvalData:
    """Named input arrays (first axis = samples) and optional targets."""

    inputs: dict[str, np.ndarray]
    targets: np.ndarray | None = None
    _halves: tuple[EvalData, EvalData] | None = field(default=None, repr=False, compare=False)

    @property
    def num_samples(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0]) if self.inputs else 0

    def halves(self) -> tuple[EvalData, EvalData] | None:
        """(fit, held out): the even and the odd samples, the same arrays on every call (evaluations
        cache the reference's outputs by them); None below `HOLD_OUT_MIN_SAMPLES` samples."""
        if self.num_samples < HOLD_OUT_MIN_SAMPLES:
            return None
        if self._halves is None:

            def part(start: int) -> EvalData:
                targets = None if self.targets is None else np.asarray(self.targets)[start::2]
                return EvalData({k: v[start::2] for k, v in self.inputs.items()}, targets)

            self._halves = (part(0), part(1))
        return self._halves


def copy_model(model: Any) -> Any:
    """A deep copy of a runnable model.

    TorchScript modules go through save/load: `deepcopy` of one that has been traced (by the ONNX
    exporter, say) gives weights that are not autograd leaves and fail under `inference_mode`.
    """
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(model, buffer)
        buffer.seek(0)
        first = next(iter(model.parameters()), None)
        return torch.jit.load(buffer, map_location=first.device if first is not None else "cpu")
    return copy.deepcopy(model)


@dataclass
class ModelHandle:
    runtime: Runtime
    format: ModelFormat
    model: Any  # torch.nn.Module / ScriptModule / ExportedProgram module, or onnx.ModelProto
    inputs: list[InputSpec]
    architecture: ArchitectureRef | None = None
    source_path: Path | None = None
    eval_data: EvalData | None = None
    device: str = "cpu"
    recipe: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Per-model caches (an ONNX Runtime session); never carried over to a new handle.
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def clone(self, **changes: Any) -> ModelHandle:
        """A copy whose model can be changed without touching this handle's."""
        model = changes.pop("model", None)
        if model is None:
            model = copy_model(self.model)
        return replace(
            self,
            model=model,
            recipe=list(changes.pop("recipe", self.recipe)),
            metadata=dict(changes.pop("metadata", self.metadata)),
            cache={},
            **changes,
        )

    def with_step(self, model: Any, step: dict[str, Any], **changes: Any) -> ModelHandle:
        """A new handle holding `model`, with `step` appended to the recipe."""
        return replace(
            self,
            model=model,
            recipe=[*self.recipe, step],
            metadata=dict(self.metadata),
            cache={},
            **changes,
        )
