"""What the graph's nodes need from whoever runs them (the session runner or optimize_local).

Nodes are plain async functions over the state; everything with side effects (events, chat,
cancel, rollback requests, progress rows) goes through this object, so the same graph runs behind
the API and in-process for the eval harness.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agents.critic import Critic
from agents.interpreter import GoalInterpreter
from agents.planners.base import Planner
from agents.workspace import Workspace

EmitFn = Callable[[str, dict[str, Any], str | None], Awaitable[None]]


async def _no_emit(type_: str, payload: dict[str, Any], key: str | None) -> None:
    return None


async def _no_messages() -> list[str]:
    return []


async def _no_reply(text: str, index: int) -> None:
    return None


async def _no_progress(state: dict[str, Any]) -> None:
    return None


@dataclass
class GraphContext:
    workspace: Workspace
    planner: Planner
    fallback_planner: Planner
    critic: Critic
    interpreter: GoalInterpreter
    emit: EmitFn = _no_emit
    take_messages: Callable[[], Awaitable[list[str]]] = _no_messages
    # Answers the user message at `index` (in the order take_messages gives them); idempotent per index.
    reply: Callable[[str, int], Awaitable[None]] = _no_reply
    on_progress: Callable[[dict[str, Any]], Awaitable[None]] = _no_progress
    cancelled: Callable[[], bool] = lambda: False
    rollback_requests: list[dict[str, Any]] = field(default_factory=list)
    method_choices: dict[str, list[str]] = field(default_factory=dict)
    attempt: int = 1  # which run of the session (1 + restarts): recorded on each trial
