"""The LLM planner: litellm tool calling with the registry's schemas, every call validated.

One step = one completion. The reply's text is the agent's reasoning; its tool calls are the
action (several calls form one trial, applied in order). A call that fails validation (malformed
JSON, unknown tool, out-of-range or disallowed arguments) is fed back to the model once with the
error; if the second answer is still invalid, or the provider keeps failing after the client's
retries, the rules planner takes this step and the action carries a note saying so.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from agents.criteria import size_reduction_percent, speedup
from agents.llm import LLMClient, LLMError, LLMReply, load_prompt, untrusted
from agents.planners.base import Planner, PlannerView, check_allowed, enforce_instructions
from agents.profile_facts import profile_facts
from agents.state import Action, ToolCall
from agents.toolset import planner_tools


class InvalidCall(Exception):
    pass


class LLMPlanner:
    name = "llm"

    def __init__(self, client: LLMClient, fallback: Planner) -> None:
        self.client = client
        self.fallback = fallback

    async def next_action(self, view: PlannerView) -> Action:
        tools = planner_tools(compilation="compilation" in view.allowed_techniques())
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": load_prompt("planner")},
            {"role": "user", "content": context_message(view)},
        ]
        try:
            reply = await self.client.complete(messages, tools=tools)
        except LLMError as err:
            return await self._fallback(
                view,
                f"LLM unavailable after {self.client.max_retries + 1} attempt(s) ({err}); "
                "the rules planner takes this step",
            )
        try:
            return self._action(reply, view)
        except InvalidCall as first:
            problem = str(first)
        messages += _feedback(reply, problem)
        try:
            second = await self.client.complete(messages, tools=tools)
        except LLMError as err:
            return await self._fallback(
                view,
                f"LLM tool call invalid ({problem}); the retry failed ({err}); the rules planner takes this step",  # noqa: E501
            )
        try:
            action = self._action(second, view)
        except InvalidCall as again:
            return await self._fallback(
                view,
                f"LLM tool call invalid twice ({problem}; then {again}); the rules planner takes this step",
            )
        action.notes.insert(
            0, f"LLM tool call invalid ({problem}); fed the error back and the LLM corrected it"
        )
        return action

    async def _fallback(self, view: PlannerView, note: str) -> Action:
        action = await self.fallback.next_action(view)
        return action.model_copy(update={"source": "rules_fallback", "notes": [note, *action.notes]})

    def _action(self, reply: LLMReply, view: PlannerView) -> Action:
        reasoning = (reply.content or "").strip()
        if not reply.tool_calls:
            raise InvalidCall("the reply called no tool; call quantize, prune, distill or finish")
        calls: list[ToolCall] = []
        for tc in reply.tool_calls:
            if tc.name == "finish":
                if calls:
                    break  # finish after tool calls: apply the calls; the next step can finish
                reason = _finish_reason(tc.arguments)
                return Action(kind="finish", reasoning=reasoning or reason, source="llm", strategy="finish")
            calls.append(_validated(tc.name, tc.arguments, view))
        return Action(kind="tool", calls=calls, reasoning=reasoning, source="llm", strategy="llm")


def _validated(name: str, raw: str, view: PlannerView) -> ToolCall:
    from tools.registry import validate_call

    try:
        arguments = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as err:
        raise InvalidCall(
            f"arguments of '{name}' are not valid JSON: {err.msg} at position {err.pos}"
        ) from err
    if not isinstance(arguments, dict):
        raise InvalidCall(f"arguments of '{name}' must be a JSON object")
    try:
        model = validate_call(name, arguments)
    except ValidationError as err:
        first = err.errors()[0] if err.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidCall(f"invalid arguments for '{name}': {loc}: {first.get('msg', 'invalid')}") from err
    except Exception as err:  # UnknownToolError and friends
        raise InvalidCall(f"{type(err).__name__}: {getattr(err, 'message', None) or err}") from err
    call = ToolCall(tool=name, arguments=model.model_dump(mode="json", exclude_unset=True))
    problem = check_allowed(call, view)
    if problem:
        raise InvalidCall(problem)
    return enforce_instructions(call, view.instructions)


def _finish_reason(raw: str) -> str:
    try:
        data = json.loads(raw) if raw else {}
        return str(data.get("reason", "")) if isinstance(data, dict) else ""
    except json.JSONDecodeError:
        return ""


def _feedback(reply: LLMReply, problem: str) -> list[dict[str, Any]]:
    """The model's own turn and the validation error, so it can correct itself once."""
    if not reply.tool_calls:
        return [
            {"role": "assistant", "content": reply.content or ""},
            {"role": "user", "content": f"Error: {problem}. Answer with exactly one tool call."},
        ]
    out: list[dict[str, Any]] = [
        {
            "role": "assistant",
            "content": reply.content or "",
            "tool_calls": [
                {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.arguments}}
                for tc in reply.tool_calls
            ],
        }
    ]
    for tc in reply.tool_calls:
        out.append({"role": "tool", "tool_call_id": tc.id, "content": f"Error, nothing was run: {problem}"})
    return out


def context_message(view: PlannerView) -> str:
    """The session as the planner sees it: numbers as JSON, user-written text fenced as data."""
    facts = profile_facts(view.profile)
    trials = []
    for t in view.trials[-12:]:
        m = t.measurement or {}
        trials.append(
            {
                "trial": t.number,
                "calls": [c.model_dump() for c in t.calls],
                "base_version": t.base_version,
                "status": t.status,
                "decision": t.decision,
                "error": t.error,
                "size_bytes": m.get("size_bytes"),
                "latency_p50_ms": m.get("latency_p50_ms"),
                "accuracy_retained": m.get("accuracy_retained"),
                "recovery": (t.tool_metrics or {}).get("recovery"),
            }
        )
    data = {
        "criteria": {
            "preset": view.criteria.criteria_name,
            "accuracy_floor": view.criteria.accuracy_floor,
            "size_reduction_target_percent": view.criteria.size_target_percent,
            "target_latency_ms": view.criteria.target_latency_ms,
            "allowed_techniques": sorted(view.allowed_techniques()),
        },
        "device": view.device,
        "runtime": view.runtime,
        "methods_offered": view.method_choices,
        "profile": {
            "total_parameters": facts.total_params,
            "linear_fraction": round(facts.linear_fraction, 3),
            "conv_fraction": round(facts.conv_fraction, 3),
            "quantizable_layers": facts.quantizable[:60],
            "prunable_layers": facts.prunable[:60],
            "size_bytes": facts.size_bytes,
        },
        "original": view.baseline.model_dump(),
        "current_version": view.current_version,
        "current": view.current.model_dump(),
        "current_size_reduction_percent": round(size_reduction_percent(view.baseline, view.current), 2),
        "current_speedup": round(speedup(view.baseline, view.current), 3),
        "current_recipe": [c.model_dump() for c in view.current_record.recipe],
        "trials": trials,
        "trials_left": view.trials_left,
        "time_left_s": round(max(0.0, (view.criteria.time_budget_s or 900.0) - view.elapsed_s), 1),
        "user_constraints": view.instructions.model_dump(exclude={"notes"}),
    }
    parts = [
        "Session state (measured by the system; trustworthy):",
        json.dumps(data, indent=1, default=str),
        untrusted("model name", view.model_name, 200),
        untrusted("model description", view.model_description, 2000),
    ]
    if view.criteria.goal:
        parts.append(untrusted("optimization goal", view.criteria.goal, 2000))
    for i, text in enumerate(view.new_messages + view.instructions.notes[-5:]):
        parts.append(untrusted(f"chat message {i + 1}", text, 1000))
    parts.append(
        "Choose the next step: one or more tool calls (applied in order to the current version), or finish."
    )
    return "\n\n".join(parts)
