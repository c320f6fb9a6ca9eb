"""Goal interpreter: the user's plain-words goal -> criteria fields.

The goal only fills fields the request did not set itself ("interpreted into the fields it does
not contradict"). Offline it is a small set of rules over the text; with an LLM configured the
model returns a JSON object (prompts/goal_interpreter.md) validated by `GoalFields`, and any
failure falls back to the rules.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.criteria import Criteria, PresetName, Technique
from agents.llm import LLMClient, LLMError, load_prompt, untrusted


class GoalFields(BaseModel):
    """What a goal may set. Everything optional: a goal rarely says everything."""

    model_config = ConfigDict(extra="ignore")

    criteria_name: PresetName | None = None
    target_accuracy_threshold: float | None = Field(None, gt=0.0, le=1.0)
    max_size_reduction_percent: float | None = Field(None, gt=0.0, lt=100.0)
    optimization_techniques: list[Technique] | None = None
    target_latency_ms: float | None = Field(None, gt=0.0)
    device: str | None = None


class Interpretation(BaseModel):
    criteria: Criteria
    applied: dict[str, Any]
    ignored: dict[str, Any]
    source: str  # "rules" | "llm" | "rules_fallback"
    note: str = ""


_NUM = r"(\d+(?:\.\d+)?)"


def rules_fields(goal: str) -> GoalFields:
    text = goal.lower()
    out: dict[str, Any] = {}
    m = re.search(
        rf"{_NUM}\s*%\s*(?:of\s+(?:the\s+|its\s+)?)?(?:accuracy|performance|success|quality)", text
    ) or re.search(rf"(?:accuracy|performance|success|quality)[^.\d]{{0,30}}?{_NUM}\s*%", text)
    if m:
        out["target_accuracy_threshold"] = min(1.0, float(m.group(1)) / 100.0)
    elif re.search(r"\b(no|without|zero)\s+(accuracy\s+)?(loss|drop)\b|\blossless\b", text):
        out["target_accuracy_threshold"] = 0.99

    if re.search(r"\bhalf\s+(the\s+|its\s+)?size\b|\bhalve\b", text):
        out["max_size_reduction_percent"] = 50.0
    m = re.search(rf"{_NUM}\s*(?:x|times)\s+smaller", text)
    if m and float(m.group(1)) > 1:
        out["max_size_reduction_percent"] = round(100.0 * (1.0 - 1.0 / float(m.group(1))), 2)
    m = re.search(
        rf"{_NUM}\s*%\s*(?:smaller|size reduction|reduction in size|less (?:memory|storage))", text
    ) or re.search(
        rf"(?:shrink|reduce|cut)\s+(?:it|the model|the size|its size)?\s*(?:size\s+)?by\s+{_NUM}\s*%", text
    )
    if m:
        out["max_size_reduction_percent"] = min(99.0, float(m.group(1)))

    m = re.search(rf"(?:under|below|within|at most|less than|<)\s*{_NUM}\s*ms\b", text)
    if m:
        out["target_latency_ms"] = float(m.group(1))
    m = re.search(rf"{_NUM}\s*hz\b", text)
    if m and "target_latency_ms" not in out and float(m.group(1)) > 0:
        out["target_latency_ms"] = round(1000.0 / float(m.group(1)), 3)

    techniques: list[str] | None = None
    if re.search(r"\b(no|without|don'?t|do not)\s+prun", text) or re.search(r"\bonly\s+quantiz", text):
        techniques = ["quantization"]
    elif re.search(r"\b(no|without|don'?t|do not)\s+quantiz", text) or re.search(r"\bonly\s+prun", text):
        techniques = ["pruning"]
    if techniques:
        out["optimization_techniques"] = techniques

    if re.search(r"\b(gpu|cuda|jetson|orin)\b", text):
        out["device"] = "cuda"
    elif re.search(r"\bcpu\b|\braspberry\b|\bon the robot'?s? cpu\b", text):
        out["device"] = "cpu"

    if re.search(r"\b(as small as possible|smallest|maximum compression|max(imum)? compression)\b", text):
        out["criteria_name"] = "max_compression"
    elif re.search(r"\b(as fast as possible|fastest|lowest latency|max(imum)? speed|real[- ]time)\b", text):
        out["criteria_name"] = "max_speed"
    elif re.search(
        r"\b(accuracy first|keep (the )?accuracy|don'?t lose accuracy|accuracy matters most)\b", text
    ):
        out["criteria_name"] = "accuracy_first"
    return GoalFields.model_validate(out)


def merge(criteria: Criteria, explicit: set[str], fields: GoalFields, source: str) -> Interpretation:
    """Apply goal fields to the criteria wherever the request did not set the field itself."""
    applied: dict[str, Any] = {}
    ignored: dict[str, Any] = {}
    for name, value in fields.model_dump(exclude_none=True).items():
        if name == "device" and value not in ("cpu", "cuda", "auto"):
            ignored[name] = value
            continue
        if name in explicit:
            if getattr(criteria, name) != value:
                ignored[name] = value
            continue
        applied[name] = value
    try:
        merged = Criteria.model_validate({**criteria.model_dump(), **applied})
    except ValidationError as err:
        return Interpretation(
            criteria=criteria,
            applied={},
            ignored={**ignored, **applied},
            source=source,
            note=f"the goal's fields were inconsistent and were not applied: {err.errors()[0]['msg']}",
        )
    # A preset named by the goal brings its own defaults for the fields nobody set.
    return Interpretation(criteria=merged, applied=applied, ignored=ignored, source=source)


class GoalInterpreter:
    """LLM interpreter when a client is given, the rules otherwise (and as its fallback)."""

    def __init__(self, llm: LLMClient | None = None) -> None:
        self.llm = llm

    async def interpret(self, goal: str, criteria: Criteria, explicit: set[str]) -> Interpretation:
        if self.llm is None:
            return merge(criteria, explicit, rules_fields(goal), "rules")
        try:
            reply = await self.llm.complete(
                [
                    {"role": "system", "content": load_prompt("goal_interpreter")},
                    {"role": "user", "content": untrusted("goal", goal)},
                ],
                json_mode=True,
            )
            fields = GoalFields.model_validate(json.loads(_json_block(reply.content or "")))
            return merge(criteria, explicit, fields, "llm")
        except (LLMError, ValueError, ValidationError) as err:
            result = merge(criteria, explicit, rules_fields(goal), "rules_fallback")
            result.note = f"the LLM interpreter failed ({str(err)[:200]}); the rules parser read the goal"
            return result


def _json_block(text: str) -> str:
    m = re.search(r"\{.*\}", text, re.S)
    return m.group(0) if m else text
