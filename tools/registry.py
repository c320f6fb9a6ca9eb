"""The tool registry: each tool's name, description, argument model (tools.arguments) and function.

The same models produce the LLM's tool definitions (OpenAI function-calling format) and validate
every call before it runs, so a call the schema does not allow never reaches a tool.

- `TOOLS` (quantize, prune, distill, compile_model): the transforms the planner may call (compile_model
  only in sessions that allow the `compilation` technique: agents.toolset offers it then). `tool_definitions`,
  `validate_call` and `run_tool` serve these only, so the LLM planner's tool list is quantize, prune,
  distill (and its own finish). distill, and quantize with recovery='qat', learn from a teacher (the
  session's original model), passed to `run_tool` beside the arguments: it is no LLM argument.
- `ALL_TOOLS` adds the measuring and writing tools (inspect_model, benchmark, evaluate, export):
  `all_tool_definitions`, `validate_any_call` and `run_any_tool` serve the full set. The functions
  themselves validate their arguments against these models (`check_arguments`), so a direct Python call
  obeys the same ranges and enums as an LLM's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from tools.arguments import (
    BenchmarkArgs,
    CompileModelArgs,
    DistillArgs,
    EvaluateArgs,
    ExportArgs,
    InspectModelArgs,
    PruneArgs,
    QuantizeArgs,
)
from tools.errors import InvalidArgumentError, ToolError
from tools.handle import ModelHandle


class UnknownToolError(ToolError):
    code = "unknown_tool"


class MalformedArgumentsError(InvalidArgumentError):
    """The arguments are not a JSON object (an LLM's text that does not parse)."""

    code = "malformed_arguments"


def _run_quantize(handle: ModelHandle, args: BaseModel, teacher: ModelHandle | None = None) -> ModelHandle:
    from tools.quantization import quantize

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
        block_size=a.block_size,
        accuracy_target=a.accuracy_target,
        size_target=a.size_target,
        recovery=a.recovery,
        recovery_steps=a.recovery_steps,
        recovery_time_s=a.recovery_time_s,
        recovery_learning_rate=a.recovery_learning_rate,
        teacher=teacher,
    )


def _run_prune(handle: ModelHandle, args: BaseModel, teacher: ModelHandle | None = None) -> ModelHandle:
    from tools.pruning import prune

    a = PruneArgs.model_validate(args.model_dump())
    return prune(handle, a.method, a.amount, scope=a.scope, include=a.include, exclude=a.exclude, seed=a.seed)


def _run_distill(handle: ModelHandle, args: BaseModel, teacher: ModelHandle | None = None) -> ModelHandle:
    from tools.distillation import distill

    a = DistillArgs.model_validate(args.model_dump())
    if teacher is None:
        raise InvalidArgumentError(
            "distill needs the teacher to learn from (the original model): run_tool(..., teacher=handle)"
        )
    return distill(handle, teacher, **a.model_dump())


def _run_compile(handle: ModelHandle, args: BaseModel, teacher: ModelHandle | None = None) -> ModelHandle:
    from tools.compiling import compile_model

    a = CompileModelArgs.model_validate(args.model_dump())
    return compile_model(handle, device=a.device, mode=a.mode)


def _run_inspect(handle: ModelHandle, args: BaseModel, **_context: Any) -> Any:
    from tools.profile import inspect_model

    InspectModelArgs.model_validate(args.model_dump())
    return inspect_model(handle)


def _run_benchmark(handle: ModelHandle, args: BaseModel, **_context: Any) -> Any:
    from tools.benchmarking import benchmark

    a = BenchmarkArgs.model_validate(args.model_dump())
    return benchmark(handle, **a.model_dump())


def _run_evaluate(handle: ModelHandle, args: BaseModel, **context: Any) -> Any:
    from tools.evaluation import evaluate

    a = EvaluateArgs.model_validate(args.model_dump())
    if context.get("reference") is None:
        raise InvalidArgumentError("evaluate needs the reference model to compare with (reference=...)")
    return evaluate(handle, reference=context["reference"], data=context.get("data"), **a.model_dump())


def _run_export(handle: ModelHandle, args: BaseModel, **_context: Any) -> Any:
    from tools.exporting import export

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
        description="Quantize the current model to a lower precision (int8, 4-bit block-wise, fp16; see "
        "`method`), optionally with mixed precision chosen by measured per-layer sensitivity "
        "(`accuracy_target`). Returns a new candidate version that is then benchmarked and evaluated; the "
        "current version stays if the candidate misses the goal.",
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
    "distill": ToolSpec(
        name="distill",
        description="Recover accuracy a pruned (or partly quantized) candidate lost: train it to "
        "reproduce the original model's outputs (knowledge distillation on the evaluation inputs and "
        "augmented copies, or inputs synthesized from the signature), within a step and a time budget. "
        "Call it in the same trial right after prune, before quantize (it trains float weights; for "
        "quantized layers use quantize's recovery='qat'). Torch models only.",
        args_model=DistillArgs,
        run=_run_distill,
    ),
    "compile_model": ToolSpec(
        name="compile_model",
        description="Deploy runtime for decoder models (OpenVLA-style VLAs, Llama-style causal LMs): a "
        "static KV cache written at position tensors, vision + prefill and each decode step compiled "
        "(inductor; on a GPU with mode 'reduce-overhead' each decode step is one CUDA graph). Lossless: the "
        "same greedy tokens as the eager model, only faster. Call it last in a trial, after quantize (the "
        "runtime runs the quantized layers). Not for ONNX models or non-decoder networks.",
        args_model=CompileModelArgs,
        run=_run_compile,
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
    """The planner's tool definitions (quantize, prune, distill, compile_model) as OpenAI tools."""
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


def run_tool(
    name: str,
    handle: ModelHandle,
    args: BaseModel | dict[str, Any] | str,
    *,
    teacher: ModelHandle | None = None,
) -> ModelHandle:
    """Validate (if needed) and run one planner tool on `handle`; returns the new handle. `teacher` is the
    model recovery learns from (distill; quantize with recovery='qat'): the session's original model."""
    spec = _spec(name)
    if not isinstance(args, spec.args_model):
        args = validate_call(name, args if not isinstance(args, BaseModel) else args.model_dump())
    return spec.run(handle, args, teacher=teacher)


def run_any_tool(
    name: str, handle: ModelHandle, args: BaseModel | dict[str, Any] | str | None = None, **context: Any
) -> Any:
    """Validate (if needed) and run any tool; `context` carries what is not an LLM argument (evaluate's
    `reference` and `data`). Returns the tool's result (a handle, profile, measurement or path)."""
    spec = _spec(name, ALL_TOOLS)
    if not isinstance(args, spec.args_model):
        args = validate_any_call(name, args if not isinstance(args, BaseModel) else args.model_dump())
    if name in TOOLS:
        return spec.run(handle, args, teacher=context.get("teacher"))
    return spec.run(handle, args, **context)
