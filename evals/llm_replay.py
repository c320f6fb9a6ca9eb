"""Recording and replaying the LLM's replies, so an LLM-driven run can be re-scored offline.

`RecordingLLMClient` wraps the configured client (`--planner llm --record DIR`) and appends every
reply (or provider error) to `DIR/<case>.jsonl`. `ReplayLLMClient` (`--planner recorded`) serves
them back without a network. Replies are queued per agent role (planner, critic, goal
interpreter, told apart by their system prompt), so a critic call that happens in one run and not
in the other does not shift the planner's replies. A replay that runs out of replies raises
`LLMError`, which the planner handles like a provider outage (the rules planner takes the step,
and the run's events say so).

File format: the first line is `{"_meta": {...}}` (provider, model, when, how it was made); each
further line is `{"role", "request_sha256", "reply": {"content", "tool_calls": [{"id", "name",
"arguments"}]}}` or `{"role", "request_sha256", "error"}`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

from agents.llm import LLMClient, LLMError, LLMReply, LLMToolCall, load_prompt

ROLES = {"planner": "planner", "critic": "critic", "goal_interpreter": "interpreter"}


def role_of(messages: list[dict[str, Any]]) -> str:
    system = next((m.get("content") for m in messages if m.get("role") == "system"), "") or ""
    for prompt, role in ROLES.items():
        if system == load_prompt(prompt):
            return role
    return "other"


def request_digest(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    blob = json.dumps({"messages": messages, "tools": tools}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class RecordingLLMClient(LLMClient):
    """The configured client, with every reply appended to a JSONL file."""

    def __init__(self, inner: LLMClient, path: Path, *, case: str, provenance: str | None = None) -> None:
        super().__init__(
            inner.model,
            api_base=inner.api_base,
            api_key=inner.api_key,
            timeout_s=inner.timeout_s,
            max_retries=inner.max_retries,
            temperature=inner.temperature,
            backoff_s=inner.backoff_s,
        )
        self.inner = inner
        self.path = Path(path)
        meta = {
            "case": case,
            "model": inner.model,
            "api_base": inner.api_base,
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "provenance": provenance or f"recorded from the configured provider ({inner.model})",
        }
        self.path.write_text(json.dumps({"_meta": meta}) + "\n")

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        json_mode: bool = False,
    ) -> LLMReply:
        entry: dict[str, Any] = {"role": role_of(messages), "request_sha256": request_digest(messages, tools)}
        try:
            reply = await self.inner.complete(messages, tools=tools, json_mode=json_mode)
        except LLMError as err:
            entry["error"] = str(err)
            self._append(entry)
            raise
        entry["reply"] = {
            "content": reply.content,
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls],
        }
        self._append(entry)
        return reply

    def _append(self, entry: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")


class ReplayLLMClient(LLMClient):
    """Serves recorded replies in order, per role; no network."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        self.meta: dict[str, Any] = lines[0].get("_meta", {}) if lines and "_meta" in lines[0] else {}
        entries = lines[1:] if self.meta else lines
        self.queues: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        for e in entries:
            self.queues[e.get("role", "other")].append(e)
        self.served = 0
        self.mismatched_requests = 0
        super().__init__(f"replay/{self.meta.get('model', 'unknown')}", max_retries=0, backoff_s=0.0)

    @property
    def provenance(self) -> str:
        return str(self.meta.get("provenance", "unknown provenance"))

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        json_mode: bool = False,
    ) -> LLMReply:
        role = role_of(messages)
        queue = self.queues.get(role)
        if not queue:
            raise LLMError(f"the recording {self.path.name} has no more '{role}' replies")
        entry = queue.popleft()
        self.served += 1
        if entry.get("request_sha256") != request_digest(messages, tools):
            # The replayed run saw different measurements than the recorded one (timings differ
            # between machines); the reply is still the one the provider gave at this step.
            self.mismatched_requests += 1
        if "error" in entry:
            raise LLMError(f"recorded provider error: {entry['error']}")
        reply = entry["reply"]
        return LLMReply(
            content=reply.get("content"),
            tool_calls=[
                LLMToolCall(id=c["id"], name=c["name"], arguments=c["arguments"])
                for c in reply.get("tool_calls", [])
            ],
        )
