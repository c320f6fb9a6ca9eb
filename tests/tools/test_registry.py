"""The tool registry: schemas the LLM sees, validation of its calls, and running them."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from tests.tools.conftest import assert_same_weights, mlp_handle, weights_snapshot
from tools.export import serialized_size
from tools.registry import (
    TOOLS,
    MalformedArgumentsError,
    PruneArgs,
    QuantizeArgs,
    UnknownToolError,
    run_tool,
    tool_definitions,
    validate_call,
)


def test_definitions_are_openai_tools() -> None:
    definitions = tool_definitions()
    assert [d["function"]["name"] for d in definitions] == list(TOOLS) == ["quantize", "prune"]
    for d in definitions:
        assert d["type"] == "function" and d["function"]["description"]
        params = d["function"]["parameters"]
        assert params["type"] == "object" and params["additionalProperties"] is False
        assert "method" in params["required"]
        for prop in params["properties"].values():
            assert prop.get("description"), prop
        json.dumps(d)  # plain JSON
    quantize_def, prune_def = definitions
    methods = quantize_def["function"]["parameters"]["properties"]["method"]["enum"]
    assert set(methods) == {"dynamic_int8", "weight_only_int8", "weight_only_int4", "bnb_int8", "bnb_nf4",
                            "fp16", "bf16", "static_int8"}  # fmt: skip
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
    ],
)
def test_invalid_calls_are_refused(name: str, arguments: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        validate_call(name, arguments)  # type: ignore[arg-type]


def test_unknown_tool_message_lists_tools() -> None:
    with pytest.raises(UnknownToolError, match="quantize, prune"):
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
