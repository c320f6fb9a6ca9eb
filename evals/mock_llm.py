"""A local, scripted OpenAI-compatible chat-completions server, for producing and testing recordings.

It is NOT a language model and its replies are not a real provider's: the planner script reads the
session state the agent sends and answers with a fixed strategy (structured pruning at 25% followed by
distillation in the same trial if pruning is allowed, then dynamic int8 if quantization is allowed, then
finish); the critic gets a
fixed sentence and the goal interpreter an empty JSON object. Recordings made against it say so in
their `_meta.provenance`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MOCK_MODEL = "openai/robopt-scripted-mock"
PROVENANCE = (
    "local scripted OpenAI-compatible mock (evals/mock_llm.py) driven through litellm; "
    "NOT a real LLM provider: no network was available when this recording was made"
)


def _session_state(messages: list[dict[str, Any]]) -> dict[str, Any]:
    user = next((m.get("content") or "" for m in messages if m.get("role") == "user"), "")
    parts = user.split("\n\n")
    try:
        return json.loads(parts[1]) if len(parts) > 1 else {}
    except json.JSONDecodeError:
        return {}


def planner_reply(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(content, tool calls) of the scripted planner for this request."""
    state = _session_state(messages)
    allowed = set(state.get("criteria", {}).get("allowed_techniques", []))
    offered = state.get("methods_offered", {})
    done = {json.dumps(c, sort_keys=True) for t in state.get("trials", []) for c in t.get("calls", [])}
    script: list[list[tuple[str, dict[str, Any]]]] = []
    if "pruning" in allowed and "structured" in offered.get("prune", ["structured"]):
        distill = {"steps": 200, "time_budget_s": 5.0}
        script.append([("prune", {"method": "structured", "amount": 0.25}), ("distill", distill)])
    if "quantization" in allowed and "dynamic_int8" in offered.get("quantize", ["dynamic_int8"]):
        script.append([("quantize", {"method": "dynamic_int8"})])
    for calls in script:
        tool, args = calls[0]
        if json.dumps({"tool": tool, "arguments": args}, sort_keys=True) not in done and not any(
            json.loads(d).get("tool") == tool for d in done
        ):
            text = f"Scripted mock planner: next fixed step is {' then '.join(f'{t} {a}' for t, a in calls)}."
            return text, [{"name": t, "arguments": json.dumps(a)} for t, a in calls]
    return "Scripted mock planner: the fixed script is done.", [
        {"name": "finish", "arguments": json.dumps({"reason": "fixed script finished"})}
    ]


class _Handler(BaseHTTPRequestHandler):
    counter = 0
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the access log
        return

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("content-length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        if not self.path.rstrip("/").endswith("chat/completions"):
            self.send_error(404)
            return
        with self.lock:
            _Handler.counter += 1
            n = _Handler.counter
        messages = body.get("messages", [])
        message: dict[str, Any] = {"role": "assistant"}
        if body.get("tools"):
            content, calls = planner_reply(messages)
            message["content"] = content
            message["tool_calls"] = [
                {"id": f"call_{n}_{i}", "type": "function", "function": c} for i, c in enumerate(calls)
            ]
            finish = "tool_calls"
        elif (body.get("response_format") or {}).get("type") == "json_object":
            message["content"] = "{}"
            finish = "stop"
        else:
            message["content"] = "Scripted mock critic: the deterministic gate's decision stands."
            finish = "stop"
        payload = {
            "id": f"chatcmpl-mock-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", MOCK_MODEL),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class ScriptedLLMServer:
    """`with ScriptedLLMServer() as server: server.base_url` (http://127.0.0.1:<port>/v1)."""

    def __init__(self, port: int = 0) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedLLMServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
