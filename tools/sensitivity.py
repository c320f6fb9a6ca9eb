"""Mixed precision by measured sensitivity: which layers stay at higher precision under an accuracy target.

The proxy is cheap and direct: quantize one layer group at a time (everything else at higher precision),
measure the output's relative error against the float model on the evaluation data (or synthesized
inputs), and rank the groups by error per byte the group saves. Then keep the costliest groups at higher
precision, the fewest that bring the fully measured accuracy retained to the target (a bisection on how
many, so the smallest file that meets it), with `G + log2(G) + 1` quantize-and-evaluate rounds for G
groups. Groups are single layers for small models and transformer blocks (`encoder.layer.3`) beyond
`MAX_GROUPS` layers, so a 12-layer encoder costs about 17 rounds, not 80.

The module knows nothing of a runtime: the caller passes `build(high) -> candidate` (quantize with the
named layers at higher precision) and `probe(candidate) -> Probe` (evaluate against the float model).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_GROUPS = 16
_INDEX = re.compile(r"^(.*?[._/](?:\d+))(?:[._/]|$)")


@dataclass(frozen=True)
class Layer:
    name: str  # what `build` takes (an ONNX node name, a torch module name)
    module: str | None  # the torch module it came from, when known ('encoder.layer.0.attention.self.query')
    saved_bytes: int  # bytes that quantizing this layer saves


@dataclass
class LayerGroup:
    name: str
    layers: list[str]
    saved_bytes: int


@dataclass(frozen=True)
class Probe:
    accuracy_retained: float
    relative_error: float


@dataclass
class MixedChoice:
    high: list[str]  # layers kept at higher precision
    groups_high: list[str]
    accuracy_retained: float
    target: float
    met: bool
    rounds: int
    sensitivity: dict[str, float] = field(default_factory=dict)  # group -> relative error, alone quantized

    def summary(self) -> dict[str, Any]:
        return {
            "accuracy_target": self.target,
            "accuracy_retained_measured": round(self.accuracy_retained, 6),
            "target_met": self.met,
            "groups_kept_high": self.groups_high,
            "rounds": self.rounds,
            "sensitivity": {k: round(v, 6) for k, v in self.sensitivity.items()},
        }


def _block_key(layer: Layer) -> str:
    """The repeated block a layer belongs to: the name up to its first index ('encoder.layer.3')."""
    for name in (layer.module, layer.name):
        if name:
            m = _INDEX.match(name.strip("/"))
            if m:
                return m.group(1)
    return layer.module or layer.name


def group_layers(layers: Sequence[Layer], max_groups: int = MAX_GROUPS) -> list[LayerGroup]:
    """One group per layer when there are few; else per block, merged in order down to `max_groups`."""
    if len(layers) <= max_groups:
        return [LayerGroup(layer.module or layer.name, [layer.name], layer.saved_bytes) for layer in layers]
    groups: dict[str, LayerGroup] = {}
    for layer in layers:
        key = _block_key(layer)
        g = groups.setdefault(key, LayerGroup(key, [], 0))
        g.layers.append(layer.name)
        g.saved_bytes += layer.saved_bytes
    ordered = list(groups.values())
    while len(ordered) > max_groups:
        # Merge the adjacent pair that saves the fewest bytes together (keeps groups of similar weight).
        i = min(range(len(ordered) - 1), key=lambda j: ordered[j].saved_bytes + ordered[j + 1].saved_bytes)
        a, b = ordered[i], ordered[i + 1]
        ordered[i : i + 2] = [
            LayerGroup(f"{a.name}+{b.name}", a.layers + b.layers, a.saved_bytes + b.saved_bytes)
        ]
    return ordered


def choose_mixed(
    groups: Sequence[LayerGroup],
    build: Callable[[set[str]], Any],
    probe: Callable[[Any], Probe],
    target: float,
    *,
    all_high_is_useful: bool = False,
) -> tuple[Any, MixedChoice]:
    """The candidate with the fewest (costliest-per-byte) groups at higher precision that meets `target`.

    `all_high_is_useful`: every group at higher precision still compresses (4-bit with an 8-bit fallback);
    otherwise at least one group stays quantized. When no mix meets the target, the most accurate
    candidate measured comes back with `met=False` (the caller's gate decides).
    """
    full = build(set())
    first = probe(full)
    limit = len(groups) if all_high_is_useful else len(groups) - 1
    if first.accuracy_retained >= target or limit <= 0:
        met = first.accuracy_retained >= target
        return full, MixedChoice([], [], first.accuracy_retained, target, met, 1)
    rounds = 1
    everything = {name for g in groups for name in g.layers}
    sensitivity: dict[str, float] = {}
    for g in groups:
        alone = probe(build(everything - set(g.layers)))
        sensitivity[g.name] = alone.relative_error
        rounds += 1
    order = sorted(groups, key=lambda g: sensitivity[g.name] / max(g.saved_bytes, 1), reverse=True)

    def high_of(k: int) -> set[str]:
        return {name for g in order[:k] for name in g.layers}

    tried: dict[int, tuple[Any, Probe]] = {0: (full, first)}
    lo, hi = 0, limit  # k=lo misses the target; k=hi is not measured yet
    while hi - lo > 1:
        mid = (lo + hi) // 2
        candidate = build(high_of(mid))
        tried[mid] = (candidate, probe(candidate))
        rounds += 1
        if tried[mid][1].accuracy_retained >= target:
            hi = mid
        else:
            lo = mid
    if hi not in tried:
        candidate = build(high_of(hi))
        tried[hi] = (candidate, probe(candidate))
        rounds += 1
    k = hi
    if tried[k][1].accuracy_retained < target:
        k = max(tried, key=lambda j: (tried[j][1].accuracy_retained, -j))
    candidate, measured = tried[k]
    choice = MixedChoice(
        high=sorted(high_of(k)),
        groups_high=[g.name for g in order[:k]],
        accuracy_retained=measured.accuracy_retained,
        target=target,
        met=measured.accuracy_retained >= target,
        rounds=rounds,
        sensitivity=sensitivity,
    )
    return candidate, choice
