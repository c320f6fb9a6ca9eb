"""An OpenAI-compatible chat endpoint scripted for tests (respx), and what the agents sent it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

LLM_BASE = "http://llm.test/v1"
LLM_SETTINGS: dict[str, Any] = {
    "llm_model": "openai/test-model",
    "llm_api_base": LLM_BASE,
    "llm_api_key": "test-key",
    "llm_timeout_s": 5.0,
    "llm_max_retries": 1,
}

Step = Callable[[dict[str, Any]], httpx.Response] | httpx.Response | Exception


def completion(content: str | None, calls: list[tuple[str, str]] | None = None) -> httpx.Response:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
            for i, (name, args) in enumerate(calls)
        ]
    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1,
            "model": "test-model",
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        },
    )


def tool(content: str, name: str, arguments: dict[str, Any] | str) -> httpx.Response:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return completion(content, [(name, args)])


def finish(reason: str = "The goal is reached.") -> httpx.Response:
    return completion(f"Finishing: {reason}", [("finish", json.dumps({"reason": reason}))])


class ScriptedLLM:
    """Planner requests (they carry `tools`) get the scripted steps in order, then `finish`.

    Critic and goal-interpreter requests (no tools) get short, valid answers. Every request body is kept.
    """

    def __init__(self, planner_steps: list[Step], goal_fields: dict[str, Any] | None = None) -> None:
        self.steps = list(planner_steps)
        self.goal_fields = goal_fields or {}
        self.planner_requests: list[dict[str, Any]] = []
        self.other_requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body.get("tools"):
            self.planner_requests.append(body)
            step: Step = self.steps.pop(0) if self.steps else finish()
            if isinstance(step, Exception):
                raise step
            return step(body) if callable(step) else step
        self.other_requests.append(body)
        system = body["messages"][0]["content"]
        if "goal interpreter" in system:
            return completion(json.dumps(self.goal_fields))
        verdict = "Accepted" if '"accepted": true' in body["messages"][-1]["content"] else "Rejected"
        return completion(f"{verdict}: the critic agrees with the gate for these measurements.")
