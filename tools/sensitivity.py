"""Mixed precision by measured sensitivity: which layers stay at higher precision under an accuracy target.

The proxy is cheap and direct: quantize one layer group at a time (everything else at higher precision),
measure the output's relative error against the float model on the evaluation data (or synthesized
inputs), and rank the groups by error per byte the group saves. Then keep the costliest groups at higher
precision, the fewest that bring the fully measured accuracy retained to the target (a bisection on how
many, so the smallest file that meets it), with `G + log2(G) + 1` quantize-and-evaluate rounds for G
groups. Groups are single layers for small models and transformer blocks (`encoder.layer.3`) beyond
`MAX_GROUPS` layers, so a 12-layer encoder costs about 17 rounds, not 80.

Under a size target instead (`choose_for_size`): each group is measured alone at each lower precision on
offer (float, 8-bit, 4-bit), its cost the squared relative output error with only that group quantized
(errors of independent layers add up in their squares) and its saving the bytes it takes off the float
model; a multiple-choice knapsack (dynamic programming over the savings) picks one precision per group
that saves enough at the least summed cost, and the pick is built, its size measured (re-solved when
the estimate fell short) and its fidelity reported. `G * P + 2` to `+ 5` rounds for P lower precisions.

The module knows nothing of a runtime: the caller passes `build(high) -> candidate` (quantize with the
named layers at higher precision) or `build(layer -> precision)`, and `probe(candidate) -> Probe`
(evaluate against the float model).
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


# ---------------------------------------------------------------------------------------------
# Per-layer precision under a size target: measured costs, then a multiple-choice knapsack

FLOAT = "float"
KNAPSACK_UNITS = 2000  # the byte axis of the knapsack is cut into this many steps
MAX_SIZE_ROUNDS = 3  # re-solves when the built model comes out larger than the estimate


@dataclass
class SizeChoice:
    """Which precision each layer group got, what was measured to choose it, and what came out."""

    assignment: dict[str, str]  # group -> precision
    layers: dict[str, str]  # layer -> precision
    target_bytes: int
    estimated_bytes: int
    measured_bytes: int
    met: bool
    accuracy_retained: float
    relative_error: float
    rounds: int
    costs: dict[str, dict[str, float]] = field(default_factory=dict)  # group -> precision -> cost alone
    savings: dict[str, dict[str, int]] = field(default_factory=dict)  # group -> precision -> bytes saved

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for p in self.assignment.values():
            counts[p] = counts.get(p, 0) + 1
        return {
            "size_target_bytes": self.target_bytes,
            "estimated_bytes": self.estimated_bytes,
            "measured_bytes": self.measured_bytes,
            "size_target_met": self.met,
            "accuracy_retained_measured": round(self.accuracy_retained, 6),
            "relative_error_measured": round(self.relative_error, 6),
            "groups_by_precision": counts,
            "assignment": self.assignment,
            "rounds": self.rounds,
            "cost_alone": {g: {p: round(c, 8) for p, c in by.items()} for g, by in self.costs.items()},
            "bytes_saved_alone": self.savings,
            "cost": "squared relative output error with only that group quantized (errors of independent "
            "layers add up in their squares)",
        }


def choose_for_size(
    groups: Sequence[LayerGroup],
    precisions: Sequence[str],
    build: Callable[[dict[str, str]], Any],
    probe: Callable[[Any], Probe],
    size_of: Callable[[Any], int],
    target_bytes: int,
) -> tuple[Any, SizeChoice]:
    """The candidate whose per-layer precisions meet `target_bytes` at the least measured cost.

    `precisions` are the lower precisions on offer (e.g. ("int8", "int4")); "float" is always one.
    `build(layer -> precision)` quantizes the named layers (the others stay float), `probe` measures a
    candidate against the float model, `size_of` its bytes. Each group is measured alone at each
    precision (its cost: the squared relative output error; its saving: the bytes it takes off the
    float model), a multiple-choice knapsack picks one precision per group that saves enough bytes at
    the least total cost, and the pick is built and measured. When the built model comes out larger
    than the estimate, the knapsack is solved again asking for the difference too. When no mix reaches
    the target, the smallest of that and every group at the lowest precision comes back with `met` False
    (the caller's gate decides).
    """
    options = [p for p in precisions if p != FLOAT]
    base = build({})
    float_bytes = size_of(base)
    rounds = 1
    costs: dict[str, dict[str, float]] = {}
    savings: dict[str, dict[str, int]] = {}
    for g in groups:
        costs[g.name] = {FLOAT: 0.0}
        savings[g.name] = {FLOAT: 0}
        for p in options:
            candidate = build(dict.fromkeys(g.layers, p))
            costs[g.name][p] = probe(candidate).relative_error ** 2
            savings[g.name][p] = max(0, float_bytes - size_of(candidate))
            rounds += 1
    need = max(0, float_bytes - target_bytes)
    assignment: dict[str, str] = {}
    candidate, measured = base, float_bytes
    for _ in range(MAX_SIZE_ROUNDS):
        assignment = knapsack(groups, costs, savings, need)
        layers = {name: assignment[g.name] for g in groups for name in g.layers}
        candidate = build({k: v for k, v in layers.items() if v != FLOAT})
        measured = size_of(candidate)
        rounds += 1
        if measured <= target_bytes or all(assignment[g.name] == _smallest(savings[g.name]) for g in groups):
            break
        need += measured - target_bytes
    if measured > target_bytes and options:
        # Savings measured alone do not quite add up (a format's per-file overheads): when nothing fits, the
        # model with every group at the lowest precision is the fallback if it is smaller.
        lowest = {g.name: options[-1] for g in groups}
        fallback = build({name: options[-1] for g in groups for name in g.layers})
        rounds += 1
        if size_of(fallback) < measured:
            assignment, candidate, measured = lowest, fallback, size_of(fallback)
    result = probe(candidate)
    estimated = float_bytes - sum(savings[g.name][assignment[g.name]] for g in groups)
    choice = SizeChoice(
        assignment=assignment,
        layers={name: assignment[g.name] for g in groups for name in g.layers},
        target_bytes=int(target_bytes),
        estimated_bytes=int(estimated),
        measured_bytes=int(measured),
        met=measured <= target_bytes,
        accuracy_retained=result.accuracy_retained,
        relative_error=result.relative_error,
        rounds=rounds + 1,
        costs=costs,
        savings=savings,
    )
    return candidate, choice


def knapsack(
    groups: Sequence[LayerGroup],
    costs: dict[str, dict[str, float]],
    savings: dict[str, dict[str, int]],
    need: int,
) -> dict[str, str]:
    """One precision per group saving at least `need` bytes at the least summed cost (a multiple-choice
    knapsack, solved by dynamic programming over savings in `KNAPSACK_UNITS` steps; savings are rounded
    down, so a solution found saves at least what it claims). Infeasible: every group's largest saving."""
    if need <= 0:
        return {g.name: FLOAT for g in groups}
    unit = max(1, -(-need // KNAPSACK_UNITS))
    cap = -(-need // unit)
    inf = float("inf")
    # best[u] = (least cost reaching at least u units of saving, the choices that reach it)
    best: list[tuple[float, tuple[str, ...]]] = [(0.0, ())] + [(inf, ())] * cap
    for g in groups:
        nxt: list[tuple[float, tuple[str, ...]]] = [(inf, ())] * (cap + 1)
        for u, (cost, picks) in enumerate(best):
            if cost == inf:
                continue
            for p, saved in savings[g.name].items():
                v = min(cap, u + saved // unit)
                c = cost + costs[g.name][p]
                if c < nxt[v][0]:
                    nxt[v] = (c, (*picks, p))
        best = nxt
    cost, picks = best[cap]
    if cost == inf:
        return {g.name: _smallest(savings[g.name]) for g in groups}
    return {g.name: p for g, p in zip(groups, picks, strict=True)}


def _smallest(saved: dict[str, int]) -> str:
    return max(saved, key=lambda p: saved[p])
