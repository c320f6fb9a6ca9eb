"""The tool registry: one pydantic input model per agent-callable tool.

The same models produce the LLM's tool definitions (OpenAI function-calling format) and validate
every call before it runs, so a call the schema does not allow never reaches a tool.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tools.errors import InvalidArgumentError, ToolError
from tools.handle import ModelHandle


class UnknownToolError(ToolError):
    code = "unknown_tool"


class MalformedArgumentsError(InvalidArgumentError):
    """The arguments are not a JSON object (an LLM's text that does not parse)."""

    code = "malformed_arguments"


QuantMethod = Literal[
    "dynamic_int8",
    "weight_only_int8",
    "weight_only_int4",
    "bnb_int8",
    "bnb_nf4",
    "fp16",
    "bf16",
    "static_int8",
]
LayerType = Literal["Linear", "Conv1d", "Conv2d", "Conv3d", "MatMul", "Gemm", "Conv"]
_PATTERNS = (
    "fnmatch patterns on layer names: torch module qualified names (e.g. 'decoder.layers.*.mlp.*') or ONNX "
    "node / weight initializer names (e.g. '/head/*')."
)


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuantizeArgs(_Args):
    """Lower the precision of the model's weights (and activations for the int8 methods)."""

    method: QuantMethod = Field(
        description=(
            "dynamic_int8: int8 weights, activations quantized at run time (CPU, torch/ONNX, ~4x smaller). "
            "weight_only_int8: int8 weights, float compute (torch). "
            "weight_only_int4: int4 weights in groups of 128 (torch, CUDA GPU only; Linear ~8x smaller). "
            "bnb_int8 / bnb_nf4: bitsandbytes LLM.int8 / NF4 Linear layers (CUDA GPU only). "
            "fp16 / bf16: half-precision weights and compute (2x smaller; bf16 for torch only). "
            "static_int8: int8 weights and activations calibrated on the evaluation data (ONNX Runtime QDQ; "
            "torch models are exported to ONNX)."
        )
    )
    include: list[str] | None = Field(
        default=None, description=f"Only quantize layers matching one of these {_PATTERNS} Omit for all."
    )
    exclude: list[str] | None = Field(
        default=None,
        description=f"Keep layers matching one of these in full precision; {_PATTERNS} "
        "Use it to fall back sensitive layers (the output head, the first layer).",
    )
    layer_types: list[LayerType] | None = Field(
        default=None,
        description="Only quantize layers of these types (torch module classes or ONNX op types). "
        "Default: Linear layers (static_int8: Linear and convolutions).",
    )
    calibration_samples: int = Field(
        default=64, ge=1, le=4096, description="Samples used to calibrate activation ranges (static_int8)."
    )
    seed: int = Field(default=0, ge=0, description="Random seed.")
    backend: Literal["torch", "onnxruntime"] | None = Field(
        default=None,
        description="Omit to keep the model's runtime. 'onnxruntime' exports a torch model to ONNX and "
        "quantizes it there (dynamic_int8, static_int8, fp16): usually the fastest on CPU, but the result "
        "is an ONNX model that structured pruning can no longer change.",
    )


class PruneArgs(_Args):
    """Remove weights: zeros (magnitude), whole channels/neurons/heads (structured) or 2:4 patterns."""

    method: Literal["magnitude", "structured", "semi_structured_2_4"] = Field(
        description=(
            "magnitude: zero the smallest weights (unstructured; smaller only once compressed, no speedup "
            "by itself). structured: remove whole channels, neurons or attention heads and resize the layers "
            "(fewer parameters, really faster; hurts accuracy more). semi_structured_2_4: 2 of every 4 "
            "weights zero with sparse kernels (CUDA GPU only)."
        )
    )
    amount: float = Field(
        gt=0.0, lt=1.0, description="Fraction of the selected weights (or channels) to remove, e.g. 0.3."
    )
    scope: Literal["global", "per_layer"] = Field(
        default="global",
        description="global: one threshold across all selected layers; per_layer: the same fraction in each.",
    )
    include: list[str] | None = Field(
        default=None, description=f"Only prune layers matching one of these {_PATTERNS} Omit for all."
    )
    exclude: list[str] | None = Field(
        default=None, description=f"Never prune layers matching one of these; {_PATTERNS}"
    )
    seed: int = Field(default=0, ge=0, description="Random seed.")


def _run_quantize(handle: ModelHandle, args: BaseModel) -> ModelHandle:
    from tools.quantize import quantize

    a = QuantizeArgs.model_validate(args.model_dump())
    return quantize(
        handle,
        a.method,
        include=a.include,
        exclude=a.exclude,
        layer_types=list(a.layer_types) if a.layer_types else None,
        calibration_samples=a.calibration_samples,
        seed=a.seed,
        backend=a.backend or "auto",
    )


def _run_prune(handle: ModelHandle, args: BaseModel) -> ModelHandle:
    from tools.prune import prune

    a = PruneArgs.model_validate(args.model_dump())
    return prune(handle, a.method, a.amount, scope=a.scope, include=a.include, exclude=a.exclude, seed=a.seed)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    args_model: type[BaseModel]
    run: Callable[[ModelHandle, BaseModel], ModelHandle]

    def definition(self) -> dict[str, Any]:
        """The OpenAI function-calling definition of this tool."""
        schema = self.args_model.model_json_schema()
        schema.pop("title", None)
        schema.pop("description", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": schema},
        }


TOOLS: dict[str, ToolSpec] = {
    "quantize": ToolSpec(
        name="quantize",
        description="Quantize the current model to a lower precision. Returns a new candidate version "
        "that is then benchmarked and evaluated; the current version stays if the candidate misses the goal.",
        args_model=QuantizeArgs,
        run=_run_quantize,
    ),
    "prune": ToolSpec(
        name="prune",
        description="Prune the current model's weights. Returns a new candidate version that is then "
        "benchmarked and evaluated; the current version is kept if the candidate misses the goal.",
        args_model=PruneArgs,
        run=_run_prune,
    ),
}


def _spec(name: str) -> ToolSpec:
    spec = TOOLS.get(name)
    if spec is None:
        raise UnknownToolError(f"unknown tool '{name}'; available tools: {', '.join(TOOLS)}")
    return spec


def tool_definitions(names: list[str] | None = None) -> list[dict[str, Any]]:
    """Tool definitions in OpenAI function-calling format, for all tools or the named ones."""
    return [_spec(n).definition() for n in (names if names is not None else list(TOOLS))]


def validate_call(name: str, arguments: dict[str, Any] | str | None) -> BaseModel:
    """The validated arguments of a call; UnknownToolError, MalformedArgumentsError or ValidationError."""
    spec = _spec(name)
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        text = arguments.strip()
        try:
            arguments = json.loads(text) if text else {}
        except json.JSONDecodeError as exc:
            raise MalformedArgumentsError(
                f"the arguments of '{name}' are not valid JSON: {exc.msg} at position {exc.pos}"
            ) from exc
    if not isinstance(arguments, dict):
        raise MalformedArgumentsError(
            f"the arguments of '{name}' must be a JSON object, not {type(arguments).__name__}"
        )
    return spec.args_model.model_validate(arguments)


def run_tool(name: str, handle: ModelHandle, args: BaseModel | dict[str, Any] | str) -> ModelHandle:
    """Validate (if needed) and run one registered tool on `handle`; returns the new handle."""
    spec = _spec(name)
    if not isinstance(args, spec.args_model):
        args = validate_call(name, args if not isinstance(args, BaseModel) else args.model_dump())
    return spec.run(handle, args)
