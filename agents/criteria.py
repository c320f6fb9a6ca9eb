"""What the user wants from an optimization, and how candidates are scored against it.

`Criteria` is the validated request (presets fill what the request leaves out); `Measurement` is
what one version measured; `objective` turns a candidate into one number (higher is better) so
the gate and the Pareto report compare versions the same way; `meets` is the hard floor
(accuracy retained, and the latency target when one is set).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.arguments import EVAL_METRICS_HELP, EvalMetric

PresetName = Literal["balanced_optimization", "max_compression", "max_speed", "accuracy_first"]
Technique = Literal["quantization", "pruning", "half_precision", "compilation"]
Device = Literal["cpu", "cuda", "auto"]

TECHNIQUES: tuple[str, ...] = ("quantization", "pruning", "half_precision", "compilation")


class Preset(BaseModel):
    """Defaults of a named preset and the weights its objective gives each gain."""

    target_accuracy_threshold: float
    max_size_reduction_percent: float
    w_size: float
    w_speed: float
    w_memory: float
    w_accuracy: float
    description: str


PRESETS: dict[str, Preset] = {
    "balanced_optimization": Preset(
        target_accuracy_threshold=0.95,
        max_size_reduction_percent=50.0,
        w_size=1.0,
        w_speed=1.0,
        w_memory=0.25,
        w_accuracy=1.0,
        description="Shrink and speed up in equal measure, keeping 95% of the accuracy.",
    ),
    "max_compression": Preset(
        target_accuracy_threshold=0.90,
        max_size_reduction_percent=90.0,
        w_size=2.0,
        w_speed=0.25,
        w_memory=0.5,
        w_accuracy=0.5,
        description="As small as possible while keeping 90% of the accuracy.",
    ),
    "max_speed": Preset(
        target_accuracy_threshold=0.93,
        max_size_reduction_percent=75.0,
        w_size=0.25,
        w_speed=2.0,
        w_memory=0.25,
        w_accuracy=0.5,
        description="As fast as possible while keeping 93% of the accuracy.",
    ),
    "accuracy_first": Preset(
        target_accuracy_threshold=0.99,
        max_size_reduction_percent=50.0,
        w_size=0.75,
        w_speed=0.75,
        w_memory=0.25,
        w_accuracy=3.0,
        description="Only changes that keep 99% of the accuracy.",
    ),
}


class Criteria(BaseModel):
    """The optimization goal. Fields left out take the preset's values (see `resolved`)."""

    model_config = ConfigDict(extra="forbid")

    criteria_name: PresetName = Field("balanced_optimization", description="Named preset.")
    target_accuracy_threshold: float | None = Field(
        None, gt=0.0, le=1.0, description="Floor on accuracy retained (candidate / original), in (0, 1]."
    )
    max_size_reduction_percent: float | None = Field(
        None,
        gt=0.0,
        lt=100.0,
        description="How far to shrink the model at most, in percent; the agent aims for it.",
    )
    optimization_techniques: list[Technique] = Field(
        default_factory=lambda: ["quantization", "pruning"],
        description="Allowed techniques: quantization (int8/int4 and fp16/bf16 casts), pruning, half_precision "  # noqa: E501
        "(fp16/bf16 casts only), compilation (compile_model: the static-KV-cache decode runtime of a decoder "
        "model, compiled; lossless).",
    )
    target_latency_ms: float | None = Field(None, gt=0.0, description="Latency target, p50 at batch 1.")
    device: Device = Field(
        "auto", description="Where the model will run: cpu, cuda, or auto (cuda if present)."
    )
    max_trials: int | None = Field(None, ge=1, le=200, description="At most this many candidates.")
    time_budget_s: float | None = Field(None, gt=0.0, le=86400.0, description="Wall-clock budget.")
    goal: str | None = Field(None, max_length=2000, description="The goal in plain words.")
    benchmark_iterations: int = Field(30, ge=1, le=10000, description="Timed iterations per benchmark.")
    benchmark_warmup: int = Field(3, ge=0, le=1000, description="Untimed warm-up iterations per benchmark.")
    metric: EvalMetric | None = Field(
        None,
        description="The accuracy metric the floor applies to; omit to use the one that fits each output "
        f"(the results say which, and why). {EVAL_METRICS_HELP}",
    )
    output: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="For a model with several outputs: the output the floor applies to (by name); omit to "
        "apply it to the worst-scoring output. `metric`, when given, applies to this output (else to all).",
    )

    @model_validator(mode="after")
    def _coherent(self) -> Criteria:
        if not self.optimization_techniques:
            raise ValueError("optimization_techniques must name at least one technique")
        if len(set(self.optimization_techniques)) != len(self.optimization_techniques):
            raise ValueError("optimization_techniques lists a technique twice")
        if self.criteria_name == "accuracy_first" and self.target_accuracy_threshold is not None:
            if self.target_accuracy_threshold < 0.9:
                raise ValueError(
                    "criteria_name 'accuracy_first' contradicts target_accuracy_threshold below 0.9"
                )
        if (
            self.optimization_techniques == ["half_precision"]
            and self.max_size_reduction_percent is not None
            and self.max_size_reduction_percent > 50.0
        ):
            raise ValueError(
                "half_precision alone halves the size at most: max_size_reduction_percent must be <= 50"
            )
        return self

    @property
    def preset(self) -> Preset:
        return PRESETS[self.criteria_name]

    @property
    def accuracy_floor(self) -> float:
        t = self.target_accuracy_threshold
        return self.preset.target_accuracy_threshold if t is None else t

    @property
    def size_target_percent(self) -> float:
        s = self.max_size_reduction_percent
        return self.preset.max_size_reduction_percent if s is None else s

    def resolved(self, *, default_max_trials: int = 12, default_time_budget_s: float = 900.0) -> Criteria:
        """A copy with every preset-driven field filled in, as the agent will use it."""
        return self.model_copy(
            update={
                "target_accuracy_threshold": self.accuracy_floor,
                "max_size_reduction_percent": self.size_target_percent,
                "max_trials": self.max_trials or default_max_trials,
                "time_budget_s": self.time_budget_s or default_time_budget_s,
            }
        )

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


class Measurement(BaseModel):
    """What one version measured. `accuracy_retained` is relative to the original model."""

    size_bytes: int = Field(ge=0)
    latency_p50_ms: float = Field(ge=0.0)
    peak_memory_mb: float = Field(0.0, ge=0.0)
    accuracy_retained: float = 1.0
    latency_p90_ms: float | None = None
    throughput_per_s: float | None = None
    accuracy_metric: str | None = None
    accuracy_value: float | None = None
    uses_targets: bool | None = None
    metric_reason: str | None = Field(None, description="Why this accuracy metric (and which output gates).")
    accuracy_output: str | None = Field(None, description="The output the accuracy was measured on.")


_SPEED_NOISE = 0.05  # speedups within 5% are measurement noise on a shared CPU, scored as 0


def size_reduction_percent(baseline: Measurement, candidate: Measurement) -> float:
    if baseline.size_bytes <= 0:
        return 0.0
    return 100.0 * (1.0 - candidate.size_bytes / baseline.size_bytes)


def speedup(baseline: Measurement, candidate: Measurement) -> float:
    if candidate.latency_p50_ms <= 0:
        return 1.0
    return baseline.latency_p50_ms / candidate.latency_p50_ms


def memory_reduction_percent(baseline: Measurement, candidate: Measurement) -> float:
    if baseline.peak_memory_mb <= 0:
        return 0.0
    return 100.0 * (1.0 - candidate.peak_memory_mb / baseline.peak_memory_mb)


def objective(criteria: Criteria, baseline: Measurement, candidate: Measurement) -> float:
    """One score, higher is better; the original model scores 0.

    Size reduction counts up to the size target and not beyond (the target is how far the user
    wants to go); speed counts as log2 of the speedup (a 2x speedup is worth one size target);
    accuracy lost costs in proportion to how much of the allowed loss it uses.
    """
    p = criteria.preset
    target = max(criteria.size_target_percent, 1e-6)
    size_gain = max(-1.0, min(size_reduction_percent(baseline, candidate), target) / target)
    s = speedup(baseline, candidate)
    speed_gain = 0.0 if abs(s - 1.0) < _SPEED_NOISE else max(-1.0, min(2.0, math.log2(max(s, 1e-6))))
    mem_gain = max(-1.0, min(1.0, memory_reduction_percent(baseline, candidate) / 100.0))
    allowed_loss = max(1.0 - criteria.accuracy_floor, 1e-3)
    acc_cost = max(0.0, 1.0 - candidate.accuracy_retained) / allowed_loss
    score = (
        p.w_size * size_gain + p.w_speed * speed_gain + p.w_memory * mem_gain - 0.5 * p.w_accuracy * acc_cost
    )
    if criteria.target_latency_ms is not None and baseline.latency_p50_ms > criteria.target_latency_ms:
        # Progress toward a latency target the original misses is worth up to one more unit.
        gap = baseline.latency_p50_ms - criteria.target_latency_ms
        score += max(0.0, min(1.0, (baseline.latency_p50_ms - candidate.latency_p50_ms) / gap))
    return round(score, 6)


def meets(criteria: Criteria, baseline: Measurement, candidate: Measurement) -> bool:
    """The hard constraints: the accuracy floor, and the latency target when one is set."""
    if candidate.accuracy_retained + 1e-9 < criteria.accuracy_floor:
        return False
    if criteria.target_latency_ms is not None and candidate.latency_p50_ms > criteria.target_latency_ms:
        return False
    return True


def goal_reached(criteria: Criteria, baseline: Measurement, candidate: Measurement) -> bool:
    """Meets the constraints and has shrunk as far as the user asked: nothing more to gain."""
    return (
        meets(criteria, baseline, candidate)
        and size_reduction_percent(baseline, candidate) >= criteria.size_target_percent - 0.5
    )


def improvements(baseline: Measurement, candidate: Measurement) -> dict[str, Any]:
    """The gains the results report, each with its baseline and optimized values."""
    return {
        "size_reduction_percent": {
            "baseline_bytes": baseline.size_bytes,
            "optimized_bytes": candidate.size_bytes,
            "value": round(size_reduction_percent(baseline, candidate), 2),
        },
        "latency_speedup": {
            "baseline_p50_ms": round(baseline.latency_p50_ms, 4),
            "optimized_p50_ms": round(candidate.latency_p50_ms, 4),
            "value": round(speedup(baseline, candidate), 3),
        },
        "memory_reduction_percent": {
            "baseline_mb": round(baseline.peak_memory_mb, 3),
            "optimized_mb": round(candidate.peak_memory_mb, 3),
            "value": round(memory_reduction_percent(baseline, candidate), 2),
        },
        "accuracy_retained": {
            "baseline": 1.0,
            "optimized": round(candidate.accuracy_retained, 5),
            "value": round(candidate.accuracy_retained, 5),
            "metric": candidate.accuracy_metric,
            "metric_reason": candidate.metric_reason,
            "output": candidate.accuracy_output,
            "baseline_metric_value": baseline.accuracy_value,
            "optimized_metric_value": candidate.accuracy_value,
        },
    }


def pareto_front(points: list[tuple[str, Measurement]]) -> list[str]:
    """Keys of the versions no other version beats on size, latency and accuracy at once."""
    front: list[str] = []
    for key, m in points:
        dominated = False
        for other_key, o in points:
            if other_key == key:
                continue
            no_worse = (
                o.size_bytes <= m.size_bytes
                and o.latency_p50_ms <= m.latency_p50_ms
                and o.accuracy_retained >= m.accuracy_retained
            )
            better = (
                o.size_bytes < m.size_bytes
                or o.latency_p50_ms < m.latency_p50_ms
                or o.accuracy_retained > m.accuracy_retained
            )
            if no_worse and better:
                dominated = True
                break
        if not dominated:
            front.append(key)
    return front
