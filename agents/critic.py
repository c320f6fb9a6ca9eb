"""The critic: explains each accept or reject in words a robotics engineer can check.

The decision itself is the deterministic gate's (criteria.meets and the objective); the critic only
explains it. Offline the explanation is a template over the measurements; with an LLM configured
the model writes it (prompts/critic.md) and the template is the fallback.
"""

from __future__ import annotations

from typing import Any

from agents.criteria import Criteria, Measurement, size_reduction_percent, speedup
from agents.llm import LLMClient, LLMError, load_prompt


def template_explanation(
    criteria: Criteria,
    baseline: Measurement,
    current: Measurement,
    candidate: Measurement,
    *,
    accepted: bool,
    reason: str,
    candidate_objective: float,
    current_objective: float,
) -> str:
    size = size_reduction_percent(baseline, candidate)
    s = speedup(baseline, candidate)
    acc = 100 * candidate.accuracy_retained
    floor = 100 * criteria.accuracy_floor
    facts = (
        f"size {candidate.size_bytes / 1e6:.3f} MB ({size:.1f}% smaller than the original), "
        f"latency p50 {candidate.latency_p50_ms:.3f} ms ({s:.2f}x), "
        f"accuracy retained {acc:.2f}% (floor {floor:.1f}%)"
    )
    if accepted:
        return (
            f"Accepted: {facts}. Score {candidate_objective:.3f} beats the current version's "
            f"{current_objective:.3f}, so this becomes the current version."
        )
    return f"Rejected: {reason}. Measured {facts}. The current version stays (automatic rollback)."


class Critic:
    def __init__(self, llm: LLMClient | None = None) -> None:
        self.llm = llm

    async def explain(self, facts: dict[str, Any], fallback: str) -> tuple[str, str]:
        """(explanation, source). `facts` are numbers and decisions only: no user text."""
        if self.llm is None:
            return fallback, "template"
        import json

        try:
            reply = await self.llm.complete(
                [
                    {"role": "system", "content": load_prompt("critic")},
                    {"role": "user", "content": json.dumps(facts, default=str)},
                ]
            )
            text = (reply.content or "").strip()
            if not text:
                return fallback, "template"
            return text[:1500], "llm"
        except LLMError:
            return fallback, "template"
