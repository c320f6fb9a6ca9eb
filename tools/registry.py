"""The tool registry: one pydantic input model per tool.

The same models produce the LLM's tool definitions (OpenAI function-calling format) and validate
every call before it runs, so a call the schema does not allow never reaches a tool.

- `TOOLS` (quantize, prune): the transforms the planner may call. `tool_definitions`, `validate_call` and
  `run_tool` serve these only, so the LLM planner's tool list stays quantize, prune (and its own finish).
- `ALL_TOOLS` adds the measuring and writing tools (inspect_model, benchmark, evaluate, export):
  `all_tool_definitions`, `validate_any_call` and `run_any_tool` serve the full set. The functions
  themselves validate their arguments against these models (`check_arguments`), so a direct Python call
  obeys the same ranges and enums as an LLM's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class InspectModelArgs(_Args):
    """Profile the model: parameters and bytes per layer type and block, dtypes, input signature, FLOPs,
    quantizable and prunable layers, size on disk. Takes no arguments."""


class BenchmarkArgs(_Args):
    """Time forward passes of the model (warm-up excluded): p50/p90/p99 latency, throughput, memory."""

    device: str = Field(
        default="cpu",
        pattern=r"^(cpu|cuda(:[0-9]+)?)$",
        description="'cpu', 'cuda' or 'cuda:N'. CUDA needs an NVIDIA GPU on the machine.",
    )
    batch_size: int = Field(default=1, ge=1, le=4096, description="Samples per forward pass.")
    warmup: int = Field(default=10, ge=0, le=10_000, description="Untimed passes before timing.")
    iterations: int = Field(default=100, ge=1, le=100_000, description="Timed passes.")
    num_threads: int | None = Field(
        default=None, ge=1, le=1024, description="torch intra-op threads for the run (CPU); omit to keep."
    )


class EvaluateArgs(_Args):
    """Compare the model with its reference (the version it was optimized from): the task metric when the
    evaluation data has targets, else fidelity (top-1 agreement, cosine, relative error); always
    accuracy_retained."""

    output_kind: Literal["logits", "regression", "action_tokens"] | None = Field(
        default=None, description="What the outputs are; omit to infer it from the model and the data."
    )
    tolerance: float = Field(
        default=0.25,
        gt=0.0,
        le=10.0,
        description="Regression: an output counts as right when its RMS error is within this many standard "
        "deviations of the targets (or the reference's outputs).",
    )
    num_samples: int = Field(
        default=256, ge=1, le=100_000, description="Samples synthesized when there is no evaluation data."
    )
    batch_size: int = Field(default=64, ge=1, le=4096, description="Samples per forward pass.")
    seed: int = Field(default=0, ge=0, description="Random seed of synthesized inputs.")


class ExportArgs(_Args):
    """Write the model to a file that loads back with load_model and gives the same outputs."""

    fmt: Literal["onnx", "torchscript", "pt2", "safetensors"] = Field(
        description="onnx: runs in ONNX Runtime (torch int8 models from torch.ao/torchao cannot be exported "
        "to it; bf16 neither). torchscript / pt2: torch models, quantized ones included. safetensors: plain "
        "weights of a registered architecture."
    )
    path: str = Field(min_length=1, max_length=4096, description="Where to write the file.")


def check_arguments(tool: str, **arguments: Any) -> BaseModel:
    """The tool's validated arguments; InvalidArgumentError (with every field's problem) otherwise."""
    spec = _spec(tool, ALL_TOOLS)
    try:
        return spec.args_model.model_validate(arguments)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'arguments'}: {e.get('msg', 'invalid')}"
            for e in err.errors()
        )
        raise InvalidArgumentError(f"invalid arguments for {tool}: {problems}") from err


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


def _run_inspect(handle: ModelHandle, args: BaseModel, **_context: Any) -> Any:
    from tools.profile import inspect_model

    InspectModelArgs.model_validate(args.model_dump())
    return inspect_model(handle)


def _run_benchmark(handle: ModelHandle, args: BaseModel, **_context: Any) -> Any:
    from tools.benchmark import benchmark

    a = BenchmarkArgs.model_validate(args.model_dump())
    return benchmark(handle, **a.model_dump())


def _run_evaluate(handle: ModelHandle, args: BaseModel, **context: Any) -> Any:
    from tools.evaluate import evaluate

    a = EvaluateArgs.model_validate(args.model_dump())
    if context.get("reference") is None:
        raise InvalidArgumentError("evaluate needs the reference model to compare with (reference=...)")
    return evaluate(handle, reference=context["reference"], data=context.get("data"), **a.model_dump())


def _run_export(handle: ModelHandle, args: BaseModel, **_context: Any) -> Any:
    from tools.export import export

    a = ExportArgs.model_validate(args.model_dump())
    return export(handle, a.fmt, a.path)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    args_model: type[BaseModel]
    run: Callable[..., Any]

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


# The measuring and writing tools: validated like the transforms, but not offered to the planner (the
# agent benchmarks and evaluates every candidate itself).
ALL_TOOLS: dict[str, ToolSpec] = {
    **TOOLS,
    "inspect_model": ToolSpec(
        name="inspect_model",
        description="Profile the current model (parameters, bytes, dtypes, FLOPs, quantizable and prunable "
        "layers by the names include/exclude patterns use). Returns a profile; the model is unchanged.",
        args_model=InspectModelArgs,
        run=_run_inspect,
    ),
    "benchmark": ToolSpec(
        name="benchmark",
        description="Measure the current model's latency (p50/p90/p99), throughput, peak memory and size on "
        "disk on a device. Returns the measurements; the model is unchanged.",
        args_model=BenchmarkArgs,
        run=_run_benchmark,
    ),
    "evaluate": ToolSpec(
        name="evaluate",
        description="Measure how much accuracy the current model keeps against its reference (the model it "
        "was optimized from). Returns the metric and accuracy_retained; the model is unchanged.",
        args_model=EvaluateArgs,
        run=_run_evaluate,
    ),
    "export": ToolSpec(
        name="export",
        description="Write the current model to a file in a format (onnx, torchscript, pt2, safetensors) "
        "that loads back with the same outputs. Returns the file's path.",
        args_model=ExportArgs,
        run=_run_export,
    ),
}


def _spec(name: str, tools: dict[str, ToolSpec] | None = None) -> ToolSpec:
    tools = TOOLS if tools is None else tools
    spec = tools.get(name)
    if spec is None:
        raise UnknownToolError(f"unknown tool '{name}'; available tools: {', '.join(tools)}")
    return spec


def tool_definitions(names: list[str] | None = None) -> list[dict[str, Any]]:
    """The planner's tool definitions (quantize, prune) in OpenAI function-calling format."""
    return [_spec(n).definition() for n in (names if names is not None else list(TOOLS))]


def all_tool_definitions(names: list[str] | None = None) -> list[dict[str, Any]]:
    """Definitions of every tool: the transforms, inspect_model, benchmark, evaluate, export."""
    return [_spec(n, ALL_TOOLS).definition() for n in (names if names is not None else list(ALL_TOOLS))]


def validate_call(name: str, arguments: dict[str, Any] | str | None) -> BaseModel:
    """A planner call's validated arguments; UnknownToolError, MalformedArgumentsError or ValidationError."""
    return _validate(_spec(name), arguments)


def validate_any_call(name: str, arguments: dict[str, Any] | str | None) -> BaseModel:
    """As `validate_call`, for any tool of `ALL_TOOLS`."""
    return _validate(_spec(name, ALL_TOOLS), arguments)


def _validate(spec: ToolSpec, arguments: dict[str, Any] | str | None) -> BaseModel:
    name = spec.name
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
    """Validate (if needed) and run one planner tool on `handle`; returns the new handle."""
    spec = _spec(name)
    if not isinstance(args, spec.args_model):
        args = validate_call(name, args if not isinstance(args, BaseModel) else args.model_dump())
    return spec.run(handle, args)


def run_any_tool(
    name: str, handle: ModelHandle, args: BaseModel | dict[str, Any] | str | None = None, **context: Any
) -> Any:
    """Validate (if needed) and run any tool; `context` carries what is not an LLM argument (evaluate's
    `reference` and `data`). Returns the tool's result (a handle, profile, measurement or path)."""
    spec = _spec(name, ALL_TOOLS)
    if not isinstance(args, spec.args_model):
        args = validate_any_call(name, args if not isinstance(args, BaseModel) else args.model_dump())
    if name in TOOLS:
        return spec.run(handle, args)
    return spec.run(handle, args, **context)
