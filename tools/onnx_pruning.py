"""Structured (channel) pruning of ONNX graphs: the ONNX backend of `prune(handle, "structured", ...)`.

A *channel group* is a set of tensors that carry the same hidden channels: the outputs of one or more
*producers* (MatMul / Gemm / Conv with a constant weight initializer), the elementwise ops they flow
through, and the *consumers* that contract them away (MatMul / Gemm weight input rows, Conv input
channels). Removing channel `c` of a group removes output channel `c` of every producer (weight slice
and bias), channel `c` of every per-channel constant on the way (Add bias, Mul scale, PRelu slope,
BatchNormalization scale / bias / mean / var, depthwise Conv filters) and input row `c` of every
consumer, so the graph really shrinks and computes the same function of the remaining channels.

A group is pruned only when every tensor in it is understood:

- every reader is an elementwise op (Relu, LeakyRelu, Gelu, Erf, Sigmoid, Tanh, Clip, Softplus, ...;
  Add / Sub / Mul / Div / Pow / Max / Min whose other operand is a broadcastable constant or another
  tensor of the group: the Erf GELU subgraph, x * Sigmoid(x), SwiGLU's gate * up), a
  BatchNormalization, a pooling op or a depthwise Conv (channels on axis 1), a Flatten of a map of known
  size into a Gemm, or a consumer;
- every tensor is computed by a producer or such an op (the SwiGLU `Mul(act(gate), up)` pulls the up
  projection in: gate and up are pruned with the same channels);
- no tensor of the group is a graph output or read inside a subgraph, weights are not shared with
  another node, and no Add joins tensors of different producers (a residual stream, see below).

Anything else ends the group: a LayerNormalization, Reshape, Transpose, Softmax, Shape or Concat reader
(attention Q/K/V reshape to heads; residual streams feed LayerNorm), an Add with a tensor from the graph
input or an embedding Gather (the transformer residual stream). So the output layer, attention and
residual widths are never touched. `couple_residuals=True` additionally allows Adds that join
different producers when the whole residual stream is made of understood producers (a ResNet stage
whose shortcut is a projection conv): off by default, since it thins many layers at once.

Importance of a channel: the L2 norm of the producers' output-channel weights (folded with the scale
of any BatchNormalization in the group), with `consumer_importance=True` together with the consumers'
input rows (the torch path's width-group score). `amount` is the fraction of the prunable channels
removed, ranked per group (`per_layer`) or across groups (`global`, scores normalised by the group
mean; no group thinner than 10% of its channels unless amount > 0.9).
`include` / `exclude` patterns select groups by their producers: the node name, weight initializer,
torch module path (see `tools.onnx_quantization.onnx_module_path`), or the group's module
(`lm.model.layers.0.mlp`); consumers' inputs shrink with the channels their producers lose.

The input model is never modified; the result passes `onnx.checker` and strict shape inference (when
the original does) and is run once in ONNX Runtime against the original on synthesized inputs.
"""

from __future__ import annotations

import re
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from tools.errors import InvalidArgumentError, InvalidModelError, UnsupportedFormatError
from tools.handle import ModelHandle
from tools.onnx_quantization import onnx_module_path
from tools.selection import selected

Scope = Literal["global", "per_layer"]
ENGINE = "onnx_channel_groups"
PRODUCER_OPS = ("MatMul", "Gemm", "Conv")

# One data input (position 0), constant extras (Clip min/max, Dropout ratio), channel-wise.
_UNARY = frozenset(
    {
        "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Erf", "Sigmoid", "HardSigmoid", "HardSwish",
        "Tanh", "Softplus", "Softsign", "Mish", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal",
        "Identity", "Clip", "Dropout", "Cast", "ThresholdedRelu", "Sign", "Floor", "Ceil", "Round",
    }
)  # fmt: skip
# Broadcasting elementwise ops: each input a broadcastable constant or a tensor of the group.
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"})
# Of these, the ones that join two streams additively: a residual connection when they come from
# different producers.
_ADDITIVE = frozenset({"Add", "Sub", "Sum", "Mean", "Max", "Min"})
# Spatial-only ops on channels-first maps (axis 1).
_POOLS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
_QUANTIZED_OPS = frozenset(
    {
        "DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
        "QLinearMatMul", "QLinearConv", "MatMulNBits", "DynamicQuantizeMatMul",
    }
)  # fmt: skip
_MIN_KEEP_FRACTION = 0.1  # global ranking keeps at least this share of every group (amount <= 0.9)
_MAX_SKIPPED = 50  # reasons listed in the result


# --------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------


def prune_structured_onnx(
    handle: ModelHandle,
    amount: float,
    scope: Scope = "global",
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    seed: int = 0,
    *,
    consumer_importance: bool = False,
    couple_residuals: bool = False,
    verify: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """(pruned onnx.ModelProto, result) for `amount` of the prunable channels of `handle.model` removed.

    The result has the keys of the torch path's `result` (params_before / params_after /
    params_removed_fraction / pruned_groups / heads_removed / engine) plus channels_before /
    channels_after, `groups` (producers, consumers and widths of each pruned group), `skipped`
    (why other weight layers could not be pruned) and `checks`.
    """
    import onnx

    if not isinstance(handle.model, onnx.ModelProto):
        raise UnsupportedFormatError(
            f"ONNX structured pruning needs an onnx.ModelProto, got {type(handle.model).__name__}"
        )
    if not 0.0 < float(amount) < 1.0:
        raise InvalidArgumentError(f"amount must be a fraction strictly between 0 and 1, got {amount!r}")
    if scope not in ("global", "per_layer"):
        raise InvalidArgumentError(f"scope must be 'global' or 'per_layer', got {scope!r}")
    original = handle.model
    model = onnx.ModelProto()
    model.CopyFrom(original)
    index = _Index(model)
    groups, skipped = _find_groups(index, couple_residuals)
    if not groups:
        _refuse_nothing(index, skipped)
    chosen = [g for g in groups if selected(_group_names(index, g), include, exclude)]
    if not chosen:
        raise InvalidArgumentError(
            f"no prunable channel group matches include={include} exclude={exclude}; the prunable groups "
            f"are {[g.name for g in groups]} (patterns match a group's module, or its producers' node, "
            "weight or module names)"
        )
    scores = [_scores(index, g, consumer_importance) for g in chosen]
    removes = _removals(scores, float(amount), scope)
    if not any(removes):
        widths = sorted({g.channels for g in chosen})
        raise InvalidArgumentError(
            f"amount {amount} removes no whole channel: the selected groups have {widths[0]}"
            f"{'' if len(widths) == 1 else f' to {widths[-1]}'} channels; raise the amount"
        )
    params_before = _count_params(model)
    edits = _Edits(index)
    pruned: list[dict[str, Any]] = []
    for group, score, remove in zip(chosen, scores, removes, strict=True):
        if remove <= 0:
            continue
        keep = np.sort(np.argsort(-score, kind="stable")[: group.channels - remove])
        edits.apply(group, keep)
        pruned.append(_describe(index, group, len(keep)))
    edits.commit(model, [t for g in chosen for t in g.tensors])
    params_after = _count_params(model)
    checks = _check(original, model)
    if verify:
        checks.append(_verify(handle, model, seed))
    result: dict[str, Any] = {
        "params_before": params_before,
        "params_after": params_after,
        "params_removed_fraction": 1.0 - params_after / max(params_before, 1),
        "pruned_groups": len(pruned),
        "heads_removed": 0,
        "engine": ENGINE,
        "importance": "l2_producer" + ("+consumer" if consumer_importance else ""),
        "channels_before": sum(p["channels_before"] for p in pruned),
        "channels_after": sum(p["channels_after"] for p in pruned),
        "groups": pruned,
        "skipped": dict(list(skipped.items())[:_MAX_SKIPPED]),
        "checks": checks,
    }
    if len(skipped) > _MAX_SKIPPED:
        result["skipped_more"] = len(skipped) - _MAX_SKIPPED
    return model, result


def onnx_channel_groups(model: Any, *, couple_residuals: bool = False) -> dict[str, Any]:
    """What structured pruning could remove from an ONNX graph, without changing it.

    {"groups": [{name, producers, consumers, channels}], "skipped": {layer: why}}: a profile can show
    which MatMul/Gemm/Conv layers have prunable output channels and why the others have none.
    """
    index = _Index(model)
    groups, skipped = _find_groups(index, couple_residuals)
    described = []
    for group in groups:
        entry = _describe(index, group, group.channels)
        del entry["channels_before"], entry["channels_after"]
        described.append({**entry, "channels": group.channels})
    return {"groups": described, "skipped": skipped}


# --------------------------------------------------------------------------------------------------
# the graph
# --------------------------------------------------------------------------------------------------


class _Index:
    """Producers, readers, constants and inferred shapes of a graph's tensors."""

    def __init__(self, model: Any) -> None:
        graph = model.graph
        self.nodes = list(graph.node)
        self.inits = {t.name: t for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}
        self.producer: dict[str, int] = {}
        self.readers: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for idx, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    self.producer[out] = idx
            for pos, name in enumerate(node.input):
                if name:
                    self.readers[name].append((idx, pos))
        self.inner = _subgraph_reads(graph)
        self.shapes = _inferred_shapes(model)
        self.names = {*self.inits, *self.producer, *self.graph_inputs, *(v.name for v in graph.value_info)}
        self._arrays: dict[str, np.ndarray] = {}

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def init_array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            from onnx import external_data_helper, numpy_helper

            tensor = self.inits[name]
            if external_data_helper.uses_external_data(tensor):
                raise UnsupportedFormatError(
                    f"initializer '{name}' is stored in an external file; load the model with its data"
                )
            self._arrays[name] = numpy_helper.to_array(tensor)
        return self._arrays[name]

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer, Constant node, Identity of one), else None."""
        if not name or name in self.graph_inputs:  # an initializer listed as input can be overridden
            return None
        if name in self.inits:
            return self.init_array(name)
        idx = self.producer.get(name)
        if idx is None:
            return None
        node = self.nodes[idx]
        if node.op_type == "Identity":
            return self.const(node.input[0])
        if node.op_type == "Constant":
            return _constant_value(node)
        return None

    def meta(self, name: str) -> tuple[tuple[int, ...], str] | None:
        """(shape, dtype kind) of a constant tensor without reading an initializer's data, else None."""
        if not name or name in self.graph_inputs:
            return None
        if name in self.inits:
            from onnx import helper

            tensor = self.inits[name]
            kind = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).kind
            return tuple(int(d) for d in tensor.dims), kind
        idx = self.producer.get(name)
        if idx is None or self.nodes[idx].op_type not in ("Identity", "Constant"):
            return None
        if self.nodes[idx].op_type == "Identity":
            return self.meta(self.nodes[idx].input[0])
        value = _constant_value(self.nodes[idx])
        return None if value is None else (tuple(value.shape), value.dtype.kind)

    def own_weight(self, idx: int, pos: int) -> tuple[str | None, str]:
        """(initializer name, "") when input `pos` of node `idx` is a float initializer only it reads."""
        node = self.nodes[idx]
        name = node.input[pos] if pos < len(node.input) else ""
        if not name:
            return None, f"{_label(node)} has no weight input"
        if name not in self.inits or name in self.graph_inputs:
            return None, f"the weight of {_label(node)} is not a constant initializer"
        meta = self.meta(name)
        if meta is None or meta[1] != "f":
            return None, f"the weight of {_label(node)} is not floating point (quantized?)"
        if len(self.readers[name]) != 1 or name in self.inner or name in self.graph_outputs:
            return None, f"the weight '{name}' of {_label(node)} is shared with other nodes"
        return name, ""


def _label(node: Any) -> str:
    return f"{node.op_type} '{node.name}'" if node.name else node.op_type


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constant_value(node: Any) -> np.ndarray | None:
    from onnx import numpy_helper

    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


def _subgraph_reads(graph: Any) -> set[str]:
    """Every tensor name read inside the subgraphs (If / Loop / Scan bodies) of `graph`'s nodes."""
    from onnx import AttributeProto

    names: set[str] = set()

    def visit(sub: Any) -> None:
        for node in sub.node:
            names.update(i for i in node.input if i)
            for a in node.attribute:
                if a.type == AttributeProto.GRAPH:
                    visit(a.g)
                elif a.type == AttributeProto.GRAPHS:
                    for g in a.graphs:
                        visit(g)
        names.update(o.name for o in sub.output)

    for node in graph.node:
        for a in node.attribute:
            if a.type == AttributeProto.GRAPH:
                visit(a.g)
            elif a.type == AttributeProto.GRAPHS:
                for g in a.graphs:
                    visit(g)
    return names


def _inferred_shapes(model: Any) -> dict[str, list[int | None]]:
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes are a help (ranks, Flatten sizes), not a requirement
        return {}
    shapes: dict[str, list[int | None]] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[value.name] = [
                int(d.dim_value) if d.HasField("dim_value") else None for d in tensor.shape.dim
            ]
    for t in graph.initializer:
        shapes[t.name] = [int(d) for d in t.dims]
    return shapes


def _count_params(model: Any) -> int:
    """Elements of the weight initializers (int64 shape / index constants excluded), as the profile counts."""
    from onnx import TensorProto

    return sum(int(np.prod(t.dims)) if t.dims else 1 for t in model.graph.initializer
               if t.data_type != TensorProto.INT64)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# channel groups
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Info:
    """Where a tensor's channels are: axis 1 (N, C, ...) or the last axis; `block` elements per channel."""

    axis: int
    rank: int | None
    block: int = 1

    @staticmethod
    def make(axis: int, rank: int | None, block: int = 1) -> _Info:
        return _Info(-1 if rank == 2 else axis, rank, block)  # rank 2: axis 1 is the last axis

    @property
    def first(self) -> bool:
        return self.axis == 1 or self.rank == 2

    def agrees(self, other: _Info) -> bool:
        same_rank = self.axis == -1 or (self.rank is not None and self.rank == other.rank)
        return self.axis == other.axis and self.block == other.block and same_rank


@dataclass(frozen=True)
class _Cut:
    """Slice input `pos` of node `node` along `axis` to the kept channels (each `block` entries)."""

    node: int
    pos: int
    axis: int
    block: int = 1


@dataclass
class _Group:
    channels: int
    producers: list[int] = field(default_factory=list)
    consumers: list[int] = field(default_factory=list)
    passthrough: list[int] = field(default_factory=list)
    tensors: dict[str, _Info] = field(default_factory=dict)
    cuts: list[_Cut] = field(default_factory=list)
    score_out: list[_Cut] = field(default_factory=list)  # producer weights (output-channel axis)
    score_in: list[_Cut] = field(default_factory=list)  # consumer weights (input-channel axis)
    batch_norms: list[int] = field(default_factory=list)
    depthwise: list[int] = field(default_factory=list)  # Conv nodes whose `group` attribute follows
    name: str = ""


class _Refused(Exception):
    """The group cannot be pruned; the message says why."""


def _find_groups(index: _Index, couple_residuals: bool) -> tuple[list[_Group], dict[str, str]]:
    groups: list[_Group] = []
    skipped: dict[str, str] = {}
    seen: set[int] = set()
    for idx, node in enumerate(index.nodes):
        if node.op_type not in PRODUCER_OPS or idx in seen:
            continue
        if _producer_spec(index, idx) is None:
            continue  # not a weight layer (attention scores MatMul, dynamic weights)
        grower = _Grower(index, idx)
        try:
            group = grower.grow()
            if not couple_residuals:
                joint = _residual_join(index, group)
                if joint:
                    raise _Refused(f"{joint} joins the outputs of different layers (a residual stream)")
        except _Refused as exc:
            seen.update(grower.group.producers)
            for p in grower.group.producers or [idx]:
                key = _layer_name(index, p)
                skipped[key if key not in skipped else f"{key} ({index.nodes[p].name})"] = str(exc)
            continue
        seen.update(group.producers)
        groups.append(group)
    names = [_group_name(index, g) for g in groups]
    for group, name in zip(groups, names, strict=True):
        # Two groups in one module (a ResNet stage's residual widths): each by its first producer.
        group.name = name if names.count(name) == 1 else _layer_name(index, group.producers[0])
    return groups, skipped


def _producer_spec(index: _Index, idx: int) -> tuple[int, int, int, int | None] | None:
    """(weight input, its output-channel axis, channels, bias input) of a weight layer, else None."""
    node = index.nodes[idx]
    meta = index.meta(node.input[1]) if len(node.input) > 1 else None
    if meta is None or meta[1] != "f":
        return None
    shape = meta[0]
    bias = 2 if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "MatMul":
        return (1, 1, shape[1], None) if len(shape) == 2 else None
    if node.op_type == "Gemm":
        if len(shape) != 2:
            return None
        axis = 0 if _attr(node, "transB", 0) else 1
        return 1, axis, shape[axis], bias
    if len(shape) < 3 or int(_attr(node, "group", 1)) != 1:
        return None  # grouped / depthwise convolutions follow their input's channels (see _depthwise)
    return 1, 0, shape[0], bias


class _Grower:
    """Grows the channel group of one producer to closure, or raises _Refused."""

    def __init__(self, index: _Index, start: int) -> None:
        self.index = index
        self.start = start
        spec = _producer_spec(index, start)
        assert spec is not None
        self.group = _Group(channels=spec[2])
        self.queue: deque[str] = deque()
        self.roles: dict[int, set[str]] = defaultdict(set)

    def grow(self) -> _Group:
        self._add_producer(self.start)
        while self.queue:
            name = self.queue.popleft()
            self._visit(name)
        return self.group

    # -- tensors ---------------------------------------------------------------------------------

    def _add_tensor(self, name: str, info: _Info) -> None:
        have = self.group.tensors.get(name)
        if have is not None:
            if not have.agrees(info) and not info.agrees(have):
                raise _Refused(f"'{name}' is reached with two different channel layouts")
            return
        if self.index.meta(name) is not None:
            raise _Refused(f"'{name}' is a constant where the group's channels were expected")
        self.group.tensors[name] = info
        self.queue.append(name)

    def _visit(self, name: str) -> None:
        index, info = self.index, self.group.tensors[name]
        if name in index.graph_outputs:
            raise _Refused(f"'{name}' is a graph output")
        if name in index.inner:
            raise _Refused(f"'{name}' is read inside a subgraph")
        src = index.producer.get(name)
        if src is None:
            raise _Refused(f"'{name}' is a graph input, not computed by a weight layer")
        if not self.roles[src] & {"producer", "through"}:
            node = index.nodes[src]
            if node.output[0] == name and node.op_type in PRODUCER_OPS and self._try_producer(src, info):
                pass
            elif node.output[0] == name and self._through(src, None):
                pass
            else:
                raise _Refused(f"'{name}' comes from {_label(node)}, which is not channel-wise")
        for reader, pos in index.readers.get(name, []):
            roles = self.roles[reader]
            if "through" in roles or ("consumer" in roles and pos == 0):
                continue  # taken in already, with all its inputs
            if self._try_consumer(reader, pos, info) or self._through(reader, pos):
                continue
            node = index.nodes[reader]
            raise _Refused(f"'{name}' feeds {_label(node)} (input {pos}), which is not channel-wise")

    # -- producers and consumers -----------------------------------------------------------------

    def _add_producer(self, idx: int) -> None:
        index, node = self.index, self.index.nodes[idx]
        spec = _producer_spec(index, idx)
        assert spec is not None
        wpos, axis, channels, bias = spec
        if channels != self.group.channels:
            raise _Refused(f"{_label(node)} has {channels} output channels, its group {self.group.channels}")
        _, why = index.own_weight(idx, wpos)
        if why:
            raise _Refused(why)
        self.roles[idx].add("producer")
        self.group.producers.append(idx)
        cut = _Cut(idx, wpos, axis)
        self.group.cuts.append(cut)
        self.group.score_out.append(cut)
        out = node.output[0]
        if node.op_type == "Conv":
            info = _Info.make(1, index.rank(out) or len(index.inits[node.input[wpos]].dims))
        else:
            info = _Info.make(-1, 2 if node.op_type == "Gemm" else index.rank(out))
        if bias is not None:
            value = index.meta(node.input[bias])
            if value is None:
                raise _Refused(f"the bias of {_label(node)} is not constant")
            if node.op_type != "Conv":
                self._const_cut(idx, bias, value[0], _Info.make(-1, 2))
            elif value[0] == (channels,):
                self.group.cuts.append(_Cut(idx, bias, 0))
            else:
                raise _Refused(f"the bias of {_label(node)} has shape {list(value[0])}")
        self._add_tensor(out, info)

    def _try_producer(self, idx: int, info: _Info) -> bool:
        if info.block != 1:
            raise _Refused(f"{_label(self.index.nodes[idx])} joins a flattened map")
        if _producer_spec(self.index, idx) is None:
            return False
        self._add_producer(idx)
        return True

    def _try_consumer(self, idx: int, pos: int, info: _Info) -> bool:
        index, node = self.index, self.index.nodes[idx]
        if node.op_type not in PRODUCER_OPS or pos != 0 or len(node.input) < 2:
            return False
        meta = index.meta(node.input[1])
        if meta is None or meta[1] != "f":
            return False
        shape, width = meta[0], self.group.channels * info.block
        if node.op_type == "MatMul":
            if info.axis != -1 or len(shape) != 2:
                return False
            axis = 0
        elif node.op_type == "Gemm":
            if info.axis != -1 or len(shape) != 2 or _attr(node, "transA", 0):
                return False
            axis = 1 if _attr(node, "transB", 0) else 0
        else:
            if not info.first or info.block != 1 or int(_attr(node, "group", 1)) != 1 or len(shape) < 3:
                return False
            axis = 1
        if shape[axis] != width:
            raise _Refused(f"{_label(node)} takes {shape[axis]} inputs, the group has {width}")
        _, why = index.own_weight(idx, 1)
        if why:
            raise _Refused(why)
        self.roles[idx].add("consumer")
        self.group.consumers.append(idx)
        cut = _Cut(idx, 1, axis, info.block)
        self.group.cuts.append(cut)
        self.group.score_in.append(cut)
        return True

    # -- channel-wise ops ------------------------------------------------------------------------

    def _through(self, idx: int, pos: int | None) -> bool:
        """Take node `idx` in as a channel-wise op (reached at input `pos`, or from its output if None)."""
        index, node, op = self.index, self.index.nodes[idx], self.index.nodes[idx].op_type
        if "through" in self.roles[idx]:
            return True
        out = node.output[0]
        known = self.group.tensors.get(out) if pos is None else self.group.tensors[node.input[pos]]
        if known is None:
            return False
        if any(o and index.readers.get(o) or o in index.graph_outputs for o in node.output[1:]):
            return False  # a second output in use (Dropout / MaxPool / BatchNormalization statistics)
        data: list[int]
        if op in _UNARY:
            if pos not in (None, 0) or index.meta(node.input[0]) is not None:
                return False
            data = [0]
        elif op in _ELEMENTWISE:
            data = [i for i, name in enumerate(node.input) if name and index.meta(name) is None]
        elif op == "BatchNormalization" or op in _POOLS:
            if pos not in (None, 0) or not known.first or known.block != 1:
                return False
            data = [0]
        elif op == "Conv":
            return self._depthwise(idx, pos, known)
        elif op == "Flatten":
            return self._flatten(idx, pos, known)
        else:
            return False
        out_rank = index.rank(out)
        info = _Info.make(known.axis, out_rank if out_rank is not None else known.rank, known.block)
        inputs = {}
        for i in data:
            rank = index.rank(node.input[i])
            inputs[i] = _Info.make(known.axis, rank if rank is not None else info.rank, known.block)
        if info.axis == 1 and (info.rank is None or any(v.rank != info.rank for v in inputs.values())):
            raise _Refused(f"{_label(node)} broadcasts its inputs across the channel axis")
        constants: dict[int, tuple[int, ...]] = {}
        for i, name in enumerate(node.input):
            if name and i not in data:
                meta = index.meta(name)
                if meta is None:
                    raise _Refused(f"input {i} of {_label(node)} is neither constant nor of the group")
                constants[i] = meta[0]
        self.roles[idx].add("through")
        self.group.passthrough.append(idx)
        for i, shape in constants.items():
            if op != "BatchNormalization":
                self._const_cut(idx, i, shape, info)
            elif shape == (self.group.channels,):
                self.group.cuts.append(_Cut(idx, i, 0))
            else:
                raise _Refused(
                    f"{_label(node)} has {list(shape)} parameters, the group {self.group.channels}"
                )
        if op == "BatchNormalization":
            self.group.batch_norms.append(idx)
        for i, data_info in inputs.items():
            self._add_tensor(node.input[i], data_info)
        self._add_tensor(out, info)
        return True

    def _const_cut(self, idx: int, pos: int, shape: tuple[int, ...], info: _Info) -> None:
        """Check that a constant operand broadcasts channel-wise; slice it when it holds every channel."""
        node = self.index.nodes[idx]
        width = self.group.channels * info.block
        if info.axis == -1:
            if not shape or shape[-1] == 1:
                return
            if shape[-1] == width:
                self.group.cuts.append(_Cut(idx, pos, len(shape) - 1, info.block))
                return
        elif info.rank is not None and len(shape) <= info.rank:
            at = 1 - (info.rank - len(shape))
            if at < 0 or shape[at] == 1:
                return
            if shape[at] == width:
                self.group.cuts.append(_Cut(idx, pos, at, info.block))
                return
        raise _Refused(
            f"the constant operand {list(shape)} of {_label(node)} does not broadcast channel-wise"
        )

    def _depthwise(self, idx: int, pos: int | None, known: _Info) -> bool:
        index, node = self.index, self.index.nodes[idx]
        channels = self.group.channels
        weight = index.meta(node.input[1]) if len(node.input) > 1 else None
        if (
            pos != 0
            or not known.first
            or known.block != 1
            or weight is None
            or int(_attr(node, "group", 1)) != channels
            or weight[0][:2] != (channels, 1)
        ):
            return False
        _, why = index.own_weight(idx, 1)
        if why:
            raise _Refused(why)
        self.roles[idx].add("through")
        self.group.passthrough.append(idx)
        self.group.depthwise.append(idx)
        self.group.cuts.append(_Cut(idx, 1, 0))
        if len(node.input) > 2 and node.input[2]:
            bias = index.meta(node.input[2])
            if bias is None or bias[0] != (channels,):
                raise _Refused(f"the bias of {_label(node)} is not a constant of {channels} channels")
            self.group.cuts.append(_Cut(idx, 2, 0))
        out = node.output[0]
        self._add_tensor(out, _Info.make(1, index.rank(out) or known.rank))
        return True

    def _flatten(self, idx: int, pos: int | None, known: _Info) -> bool:
        index, node = self.index, self.index.nodes[idx]
        shape = index.shapes.get(node.input[0])
        if pos != 0 or known.axis != 1 or known.block != 1 or int(_attr(node, "axis", 1)) != 1:
            return False
        if shape is None or len(shape) < 3 or any(d is None for d in shape[2:]):
            raise _Refused(f"{_label(node)} flattens a map of unknown size")
        block = int(np.prod(shape[2:]))
        self.roles[idx].add("through")
        self.group.passthrough.append(idx)
        self._add_tensor(node.output[0], _Info.make(-1, 2, block))
        return True


def _residual_join(index: _Index, group: _Group) -> str | None:
    """An additive node of the group whose inputs come from different producers, if any."""
    origins: dict[str, frozenset[int]] = {}
    producers = set(group.producers)

    def origin(name: str) -> frozenset[int]:
        if name in origins:
            return origins[name]
        origins[name] = frozenset()  # cycles are impossible in a valid graph; guard anyway
        idx = index.producer[name]
        if idx in producers and index.nodes[idx].output[0] == name:
            found = frozenset({idx})
        else:
            node = index.nodes[idx]
            found = frozenset().union(*(origin(i) for i in node.input if i in group.tensors))
        origins[name] = found
        return found

    for idx in group.passthrough:
        node = index.nodes[idx]
        if node.op_type not in _ADDITIVE:
            continue
        sources = {origin(i) for i in node.input if i in group.tensors}
        if len(sources) > 1:
            return _label(node)
    return None


def _layer_name(index: _Index, idx: int) -> str:
    node = index.nodes[idx]
    return onnx_module_path(node, index.inits) or node.name or f"{node.op_type}#{idx}"


def _group_name(index: _Index, group: _Group) -> str:
    """The module holding the group's layers ('lm.model.layers.0.mlp'), else its first producer's name."""
    paths = [onnx_module_path(index.nodes[i], index.inits) for i in (*group.producers, *group.consumers)]
    parts = [p.split(".") for p in paths if p]
    if len(parts) == len(paths) and len(parts) > 1:
        common: list[str] = []
        for segment in zip(*parts, strict=False):
            if len(set(segment)) != 1:
                break
            common.append(segment[0])
        if common:
            return ".".join(common)
    return _layer_name(index, group.producers[0])


def _group_names(index: _Index, group: _Group) -> list[str]:
    """Every name an include / exclude pattern may match for a group: its module and its producers'."""
    names = [group.name]
    for idx in group.producers:
        node = index.nodes[idx]
        names += [node.name, *(i for i in node.input if i in index.inits)]
        module = onnx_module_path(node, index.inits)
        if module:
            names.append(module)
    return [n for n in names if n]


def _describe(index: _Index, group: _Group, kept: int) -> dict[str, Any]:
    return {
        "name": group.name,
        "producers": [_layer_name(index, i) for i in group.producers],
        "consumers": [_layer_name(index, i) for i in group.consumers],
        "channels_before": group.channels,
        "channels_after": kept,
    }


def _refuse_nothing(index: _Index, skipped: dict[str, str]) -> None:
    quantized = {n.op_type for n in index.nodes} & _QUANTIZED_OPS
    if quantized:
        raise UnsupportedFormatError(
            "structured pruning needs float weights and this ONNX model is already quantized "
            f"({', '.join(sorted(quantized))}); prune the float model first, then quantize it"
        )
    overridable = [
        n.input[1] for n in index.nodes
        if n.op_type in PRODUCER_OPS and len(n.input) > 1 and n.input[1] in index.inits
        and n.input[1] in index.graph_inputs
    ]  # fmt: skip
    if overridable and not skipped:
        raise InvalidArgumentError(
            "nothing to prune structurally: the weights of this ONNX graph "
            f"({', '.join(overridable[:3])}, ...) are also graph inputs (an IR version 3 export), so they "
            "may be replaced at run time and cannot be resized; re-export the model with a current exporter"
        )
    if not skipped:
        raise InvalidArgumentError(
            "nothing to prune structurally: the ONNX graph has no MatMul/Gemm/Conv with a constant float "
            "weight"
        )
    reasons = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:5])
    raise InvalidArgumentError(
        "nothing in this ONNX graph can be pruned structurally: no MatMul/Gemm/Conv output reaches another "
        "weight layer through channel-wise ops only (graph outputs, residual streams, LayerNorm, reshapes "
        "to attention heads and shared weights are never pruned). Use 'magnitude' pruning instead",
        details=f"{len(skipped)} weight layer(s) refused, e.g. {reasons}",
    )


# --------------------------------------------------------------------------------------------------
# ranking and editing
# --------------------------------------------------------------------------------------------------


def _channel_sq(array: np.ndarray, axis: int, channels: int) -> np.ndarray:
    moved = np.moveaxis(array.astype(np.float64), axis, 0)
    return np.square(moved).reshape(channels, -1).sum(axis=1)


def _scores(index: _Index, group: _Group, consumer_importance: bool) -> np.ndarray:
    channels = group.channels
    out = np.zeros(channels)
    for cut in group.score_out:
        out += _channel_sq(index.init_array(index.nodes[cut.node].input[cut.pos]), cut.axis, channels)
    for idx in group.batch_norms:
        node = index.nodes[idx]
        scale, var = index.const(node.input[1]), index.const(node.input[4])
        assert scale is not None and var is not None
        eps = float(_attr(node, "epsilon", 1e-5))
        out *= np.square(scale.astype(np.float64)) / (var.astype(np.float64) + eps)
    if consumer_importance:
        for cut in group.score_in:
            out += _channel_sq(index.init_array(index.nodes[cut.node].input[cut.pos]), cut.axis, channels)
    return np.sqrt(out)


def _removals(scores: list[np.ndarray], amount: float, scope: Scope) -> list[int]:
    """Channels to remove per group: `amount` of each (per_layer), or the lowest normalised scores overall."""
    if scope == "per_layer":
        return [min(int(amount * s.size), s.size - 1) for s in scores]
    normed = [s / max(float(s.mean()), 1e-12) for s in scores]
    flat = np.concatenate(normed)
    k = int(amount * flat.size)
    if k <= 0:
        return [0 for _ in scores]
    threshold = np.partition(flat, k - 1)[k - 1]
    cap = max(amount, 1.0 - _MIN_KEEP_FRACTION)
    return [min(int((s <= threshold).sum()), int(cap * s.size), s.size - 1) for s in normed]


def _expand(keep: np.ndarray, block: int) -> np.ndarray:
    if block == 1:
        return keep
    return (keep[:, None] * block + np.arange(block)[None, :]).reshape(-1)


class _Edits:
    """The sliced constants: weights only one node reads in place, shared constants as private copies."""

    def __init__(self, index: _Index) -> None:
        self.index = index
        self.arrays: dict[str, np.ndarray] = {}  # initializer (existing or new) -> its sliced value
        self.new: dict[tuple[int, int], str] = {}  # (node, input) -> private initializer
        self.orphans: set[str] = set()
        self.groups: dict[int, int] = {}  # depthwise Conv node -> new group count

    def apply(self, group: _Group, keep: np.ndarray) -> None:
        for cut in group.cuts:
            self._slice(cut, _expand(keep, cut.block))
        for idx in group.depthwise:
            self.groups[idx] = len(keep)

    def _slice(self, cut: _Cut, keep: np.ndarray) -> None:
        index = self.index
        node = index.nodes[cut.node]
        name = self.new.get((cut.node, cut.pos), node.input[cut.pos])
        exclusive = (
            name in index.inits
            and name not in index.graph_inputs
            and len(index.readers[name]) == 1
            and name not in index.inner
            and name not in index.graph_outputs
        )
        if name not in self.arrays:
            if exclusive:
                value = index.init_array(name)
            else:
                value = index.const(name)
                assert value is not None
                private = _fresh_name(index, f"{name}_pruned")
                self.new[(cut.node, cut.pos)] = private
                self.orphans.add(name)
                name = private
            self.arrays[name] = value
        self.arrays[name] = np.take(self.arrays[name], keep, axis=cut.axis)

    def commit(self, model: Any, tensors: list[str]) -> None:
        from onnx import helper, numpy_helper

        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        for name, value in self.arrays.items():
            tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
            if name in inits:
                inits[name].CopyFrom(tensor)
            else:
                graph.initializer.append(tensor)
        for (idx, pos), name in self.new.items():
            self.index.nodes[idx].input[pos] = name
        for idx, groups in self.groups.items():
            node = self.index.nodes[idx]
            for a in node.attribute:
                if a.name == "group":
                    a.CopyFrom(helper.make_attribute("group", groups))
        _drop_orphans(model, self.orphans)
        # Shapes recorded for the resized tensors and initializers (exporters keep value_info for both).
        stale = set(tensors) | set(self.arrays)
        kept = [v for v in graph.value_info if v.name not in stale]
        del graph.value_info[:]
        graph.value_info.extend(kept)


def _fresh_name(index: _Index, base: str) -> str:
    name, n = base, 1
    while name in index.names:
        n += 1
        name = f"{base}_{n}"
    index.names.add(name)
    return name


def _drop_orphans(model: Any, candidates: set[str]) -> None:
    """Remove the initializers / Identity / Constant nodes that the private copies left unread."""
    graph = model.graph
    pending = set(candidates)
    while pending:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        read |= _subgraph_reads(graph)
        gone = {name for name in pending if name not in read}
        if not gone:
            return
        pending = set()
        kept_inits = [t for t in graph.initializer if t.name not in gone]
        if len(kept_inits) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(kept_inits)
        kept_nodes = []
        for node in graph.node:
            if node.op_type in ("Identity", "Constant") and node.output[0] in gone:
                pending.update(i for i in node.input if i)
                continue
            kept_nodes.append(node)
        if len(kept_nodes) != len(graph.node):
            del graph.node[:]
            graph.node.extend(kept_nodes)


# --------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------


def _check(original: Any, model: Any) -> list[str]:
    """onnx.checker and strict shape inference on the result; a failure the original shares is noted."""
    notes: list[str] = []
    for what, run in (("onnx.checker", _checker), ("strict shape inference", _strict_shapes)):
        try:
            run(model)
        except Exception as exc:  # noqa: BLE001 - compared with the original below
            try:
                run(original)
            except Exception:  # noqa: BLE001
                notes.append(f"{what} fails on the original graph too: {_first_line(exc)}")
                continue
            raise InvalidModelError(
                f"structured pruning produced an invalid ONNX graph ({what}); the model was left unchanged",
                details=_first_line(exc),
            ) from exc
        notes.append(f"{what}: ok")
    return notes


def _checker(model: Any) -> None:
    import onnx

    onnx.checker.check_model(model)


def _strict_shapes(model: Any) -> None:
    from onnx import shape_inference

    shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def _verify(handle: ModelHandle, model: Any, seed: int) -> str:
    """Run the original and the pruned graph once; the outputs must keep their names, shapes and dtypes."""
    from tools.runtime import output_values, synthesize_inputs

    if not handle.inputs:
        return "onnxruntime run: skipped (no input signature)"
    inputs = synthesize_inputs(handle.inputs, 2, seed=seed)
    try:
        before = output_values(handle, inputs)
    except Exception as exc:  # noqa: BLE001 - synthesized inputs the model itself rejects
        return (
            f"onnxruntime run: skipped (the original does not run on synthesized inputs: {_first_line(exc)})"
        )
    try:
        after = output_values(handle.clone(model=model), inputs)
    except Exception as exc:
        raise InvalidModelError(
            "structured pruning produced a graph ONNX Runtime cannot run; the model was left unchanged",
            details=_first_line(exc),
        ) from exc
    for name, value in before.items():
        got = after.get(name)
        if getattr(got, "shape", None) != getattr(value, "shape", None):
            raise InvalidModelError(
                f"structured pruning changed the shape of output '{name}' "
                f"({getattr(value, 'shape', None)} -> {getattr(got, 'shape', None)}); the model was left "
                "unchanged"
            )
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            if np.isfinite(value).all() and not np.isfinite(got).all():
                raise InvalidModelError(
                    f"structured pruning made output '{name}' non-finite; the model was left unchanged"
                )
    return "onnxruntime run: ok (same output names and shapes)"


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip()
    return text[:300]
