"""The tools the planner may call, as the registry describes them, plus the agent's own `finish`."""

from __future__ import annotations

from typing import Any

from agents.planners.base import COMPILE_TOOL, TRANSFORM_TOOLS

FINISH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "finish",
        "description": "Stop optimizing and report the current version as the result. Call it when the goal is "  # noqa: E501
        "reached or when no remaining step is expected to improve the model within the criteria.",
        "parameters": {
            "type": "object",
            "properties": {"reason": {"type": "string", "description": "Why the optimization stops now."}},
            "required": ["reason"],
            "additionalProperties": False,
        },
    },
}


def planner_tools(*, compilation: bool = False) -> list[dict[str, Any]]:
    """The transforms, compile_model when the session allows `compilation`, and finish."""
    from tools.registry import tool_definitions

    names = [*TRANSFORM_TOOLS, *([COMPILE_TOOL] if compilation else [])]
    return [*tool_definitions(names), FINISH_TOOL]


def method_choices() -> dict[str, list[str]]:
    """{tool: methods its schema offers}, read from the registry's JSON schemas."""
    out: dict[str, list[str]] = {}
    try:
        from tools.registry import tool_definitions

        defs = tool_definitions(list(TRANSFORM_TOOLS))
    except Exception:
        return out
    for d in defs:
        fn = d.get("function", d)
        props = (fn.get("parameters") or {}).get("properties") or {}
        method = props.get("method") or {}
        enum = method.get("enum")
        if enum is None:
            for alt in method.get("anyOf", []) + method.get("allOf", []):
                if "enum" in alt:
                    enum = alt["enum"]
                elif "$ref" in alt:
                    enum = _resolve(fn.get("parameters") or {}, alt["$ref"]).get("enum")
            if enum is None and "$ref" in method:
                enum = _resolve(fn.get("parameters") or {}, method["$ref"]).get("enum")
        if enum:
            out[fn.get("name", "")] = [str(e) for e in enum]
    return out


def _resolve(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = schema
    for part in ref.lstrip("#/").split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}
