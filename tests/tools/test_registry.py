"""The tool registry: schemas the LLM sees, validation of its calls, and running them."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from tests.tools.conftest import assert_same_weights, mlp_handle, weights_snapshot
from tools.arguments import PruneArgs, QuantizeArgs
from tools.exporting import serialized_size
from tools.registry import (
    TOOLS,
    MalformedArgumentsError,
    UnknownToolError,
    run_tool,
    tool_definitions,
    validate_call,
)


def test_definitions_are_openai_tools() -> None:
    definitions = tool_definitions()
    assert [d["function"]["name"] for d in definitions] == list(TOOLS) == [
        "quantize", "prune", "distill", "compile_model"
    ]  # fmt: skip
    for d in definitions:
        assert d["type"] == "function" and d["function"]["description"]
        params = d["function"]["parameters"]
        assert params["type"] == "object" and params["additionalProperties"] is False
        if d["function"]["name"] not in ("distill", "compile_model"):
            assert "method" in params["required"]
        for prop in params["properties"].values():
            assert prop.get("description"), prop
        json.dumps(d)  # plain JSON
    quantize_def, prune_def, distill_def, compile_def = definitions
    compile_props = compile_def["function"]["parameters"]["properties"]
    assert compile_props["mode"]["enum"] == ["default", "reduce-overhead", "max-autotune",
                                             "max-autotune-no-cudagraphs"]  # fmt: skip
    quant = quantize_def["function"]["parameters"]["properties"]
    assert quant["recovery"]["enum"] == ["none", "qat"] and quant["recovery"]["default"] == "none"
    assert quant["size_target"]["anyOf"][0]["exclusiveMaximum"] == 1
    distill = distill_def["function"]["parameters"]["properties"]
    assert distill["steps"]["minimum"] == 1 and distill["loss"]["enum"] == ["auto", "kl", "mse", "cosine"]
    assert distill["time_budget_s"]["anyOf"][0]["exclusiveMinimum"] == 0
    assert distill_def["function"]["parameters"].get("required", []) == []
    methods = quantize_def["function"]["parameters"]["properties"]["method"]["enum"]
    assert set(methods) == {"dynamic_int8", "weight_only_int8", "weight_only_int4", "bnb_int8", "bnb_nf4",
                            "fp16", "bf16", "static_int8", "fp8_weight_only", "fp8_dynamic"}  # fmt: skip
    amount = prune_def["function"]["parameters"]["properties"]["amount"]
    assert amount["exclusiveMinimum"] == 0 and amount["exclusiveMaximum"] == 1
    assert prune_def["function"]["parameters"]["properties"]["scope"]["enum"] == ["global", "per_layer"]
    assert [d["function"]["name"] for d in tool_definitions(["prune"])] == ["prune"]


def test_validate_call_accepts_dicts_and_json_text() -> None:
    args = validate_call("quantize", '{"method": "dynamic_int8", "exclude": ["head"]}')
    assert isinstance(args, QuantizeArgs) and args.exclude == ["head"] and args.calibration_samples == 64
    args = validate_call("prune", {"method": "magnitude", "amount": 0.5, "scope": "per_layer"})
    assert isinstance(args, PruneArgs) and args.amount == 0.5


@pytest.mark.parametrize(
    ("name", "arguments", "error"),
    [
        ("compress", {}, UnknownToolError),
        ("quantize", '{"method": "dynamic_int8"', MalformedArgumentsError),
        ("quantize", "[1, 2]", MalformedArgumentsError),
        ("quantize", {"method": "int3"}, ValidationError),
        ("quantize", {"method": "fp16", "bits": 3}, ValidationError),
        ("quantize", {"method": "static_int8", "calibration_samples": 0}, ValidationError),
        ("quantize", {"method": "fp16", "layer_types": ["LSTM"]}, ValidationError),
        ("quantize", {"method": "dynamic_int8", "backend": "tensorrt"}, ValidationError),
        ("prune", {"method": "magnitude", "amount": 1.0}, ValidationError),
        ("prune", {"method": "magnitude", "amount": 0}, ValidationError),
        ("prune", {"method": "magnitude", "amount": 0.3, "scope": "local"}, ValidationError),
        ("prune", {"amount": 0.3}, ValidationError),
        ("quantize", {"method": "dynamic_int8", "recovery": "finetune"}, ValidationError),
        ("quantize", {"method": "weight_only_int4", "size_target": 1.0}, ValidationError),
        ("quantize", {"method": "dynamic_int8", "recovery": "qat", "recovery_steps": 0}, ValidationError),
        ("distill", {"steps": 0}, ValidationError),
        ("distill", {"time_budget_s": 0}, ValidationError),
        ("distill", {"loss": "hinge"}, ValidationError),
        ("distill", {"teacher": "v0"}, ValidationError),
    ],
)
def test_invalid_calls_are_refused(name: str, arguments: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        validate_call(name, arguments)  # type: ignore[arg-type]


def test_unknown_tool_message_lists_tools() -> None:
    with pytest.raises(UnknownToolError, match="quantize, prune, distill"):
        tool_definitions(["nope"])


def test_run_tool_applies_and_leaves_input_untouched() -> None:
    handle = mlp_handle()
    before = weights_snapshot(handle)
    quantized = run_tool("quantize", handle, validate_call("quantize", {"method": "dynamic_int8"}))
    assert serialized_size(quantized) <= 0.3 * serialized_size(handle)
    assert quantized.recipe[-1]["method"] == "dynamic_int8" and quantized.runtime == "torch"
    via_ort = run_tool("quantize", handle, {"method": "dynamic_int8", "backend": "onnxruntime"})
    assert via_ort.runtime == "onnx" and serialized_size(via_ort) <= 0.3 * serialized_size(handle)
    pruned = run_tool("prune", handle, '{"method": "magnitude", "amount": 0.5}')
    weight = pruned.model.encoder[2].weight
    assert float((weight == 0).float().mean()) >= 0.49
    assert_same_weights(before, weights_snapshot(handle))
    assert torch.count_nonzero(handle.model.encoder[2].weight) == handle.model.encoder[2].weight.numel()


def test_planner_definitions_unchanged_and_full_set_separate() -> None:
    from agents.toolset import planner_tools
    from tools.registry import ALL_TOOLS, all_tool_definitions

    assert [d["function"]["name"] for d in planner_tools()] == ["quantize", "prune", "distill", "finish"]
    names = [d["function"]["name"] for d in tool_definitions()]
    assert names == ["quantize", "prune", "distill", "compile_model"]
    # compile_model is offered to the planner only in sessions that allow compilation.
    offered = [d["function"]["name"] for d in planner_tools(compilation=True)]
    assert offered[-2:] == ["compile_model", "finish"]
    with pytest.raises(UnknownToolError):
        validate_call("benchmark", {})  # the planner cannot call measuring tools
    definitions = {d["function"]["name"]: d["function"] for d in all_tool_definitions()}
    assert list(definitions) == list(ALL_TOOLS) == ["quantize", "prune", "distill", "compile_model",
                                                    "inspect_model", "benchmark", "evaluate", "export"]  # fmt: skip  # noqa: E501
    for fn in definitions.values():
        params = fn["parameters"]
        assert fn["description"] and params["type"] == "object" and params["additionalProperties"] is False
        assert all(prop.get("description") for prop in params.get("properties", {}).values()), fn["name"]
        json.dumps(fn)
    bench = definitions["benchmark"]["parameters"]["properties"]
    assert bench["batch_size"]["minimum"] == 1 and bench["iterations"]["minimum"] == 1
    assert bench["warmup"]["minimum"] == 0 and "pattern" in bench["device"]
    fmt = definitions["export"]["parameters"]["properties"]["fmt"]
    assert fmt["enum"] == ["onnx", "torchscript", "pt2", "safetensors"]
    assert definitions["export"]["parameters"]["required"] == ["fmt", "path"]
    tolerance = definitions["evaluate"]["parameters"]["properties"]["tolerance"]
    assert tolerance["exclusiveMinimum"] == 0
    assert definitions["inspect_model"]["parameters"].get("properties", {}) == {}


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("benchmark", {"batch_size": 0}),
        ("benchmark", {"device": "tpu"}),
        ("benchmark", {"iterations": 10**9}),
        ("evaluate", {"tolerance": 0}),
        ("evaluate", {"output_kind": "probabilities"}),
        ("export", {"fmt": "tflite", "path": "m.tflite"}),
        ("export", {"fmt": "onnx"}),
        ("inspect_model", {"deep": True}),
    ],
)
def test_measuring_tool_calls_are_validated(name: str, arguments: dict) -> None:
    from tools.registry import validate_any_call

    with pytest.raises(ValidationError):
        validate_any_call(name, arguments)


def test_direct_calls_obey_the_same_schema() -> None:
    from tools.benchmarking import benchmark
    from tools.errors import InvalidArgumentError
    from tools.evaluation import evaluate

    handle = mlp_handle()
    with pytest.raises(InvalidArgumentError, match="device"):
        benchmark(handle, device="cudax", iterations=1)  # not 'cuda' or 'cuda:N'
    with pytest.raises(InvalidArgumentError, match="iterations"):
        benchmark(handle, iterations=10**9)
    with pytest.raises(InvalidArgumentError, match="tolerance"):
        evaluate(handle, reference=handle, tolerance=50.0)
    with pytest.raises(InvalidArgumentError, match="output_kind"):
        evaluate(handle, reference=handle, output_kind="probabilities")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="reference"):
        evaluate(handle, reference="v1")  # type: ignore[arg-type]


def test_run_any_tool_measures_and_writes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tools.errors import InvalidArgumentError
    from tools.loading import load_model
    from tools.registry import run_any_tool

    handle = mlp_handle()
    profile = run_any_tool("inspect_model", handle)
    assert profile.quantizable_layers == ["encoder.0", "encoder.2", "head"]
    result = run_any_tool("benchmark", handle, {"warmup": 0, "iterations": 2, "batch_size": 4})
    assert result.batch_size == 4 and result.iterations == 2
    pruned = run_tool("prune", handle, {"method": "magnitude", "amount": 0.97})
    kept = run_any_tool("evaluate", pruned, '{"num_samples": 32}', reference=handle)
    assert kept.accuracy_retained < 0.5
    with pytest.raises(InvalidArgumentError, match="reference"):
        run_any_tool("evaluate", pruned, {})
    path = run_any_tool("export", handle, {"fmt": "onnx", "path": str(tmp_path / "m.onnx")})
    assert load_model(path).runtime == "onnx"


def test_no_tool_imports_the_registry() -> None:
    """The registry imports the tools; a tool that imported it back would close a circle."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "tools"
    offenders = []
    for path in package.glob("*.py"):
        if path.name == "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n == "tools.registry"]
    assert offenders == []


def test_distill_runs_through_the_registry_with_its_teacher() -> None:
    from tools.errors import InvalidArgumentError

    handle = mlp_handle()
    pruned = run_tool("prune", handle, {"method": "structured", "amount": 0.5})
    with pytest.raises(InvalidArgumentError, match="distill needs the teacher"):
        run_tool("distill", pruned, {"steps": 5})
    recovered = run_tool("distill", pruned, {"steps": 5, "time_budget_s": None}, teacher=handle)
    step = recovered.recipe[-1]
    assert step["tool"] == "distill" and step["result"]["steps_run"] == 5
    assert step["result"]["data_source"] == "synthesized"  # neither model carries evaluation data
