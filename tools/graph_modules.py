"""Editable module trees from torch graphs, so that every torch technique reaches `.pt2` and TorchScript.

A `torch.export` program's `module()` is a GraphModule whose graph calls `aten.linear` /
`aten.conv2d` / `aten.batch_norm` on parameters that sit in empty holder modules: there is no
`nn.Linear` for torchao, torch.ao or a pruner to swap or resize. `lift_layers` turns each such call
whose weights belong to it alone into a real `nn.Linear` / `nn.Conv1d` / `nn.Conv2d` /
`nn.BatchNorm*d` submodule under the layer's own qualified name (`encoder.layer.0.attention.query`),
called from the graph as a `call_module` node; everything else in the graph (attention reshapes,
residual adds, norms) stays as it was. The module computes exactly what the program computed.

A TorchScript module gets there through torch's own converter (`TS2EPConverter`: TorchScript ->
ExportedProgram, traced on example inputs of the handle's signature); `module_tree` does that and
checks that the converted graph gives the TorchScript module's outputs before any tool edits it.

`width_groups` finds, on a lifted graph, the hidden widths that structured pruning can shrink
without breaking the graph: producers (layers whose output channels are the width), consumers
(layers that read it as their input channels) and per-channel layers between them (batch norms),
joined only by elementwise ops (activations, gating products, dropout, pooling), with no other user
of the width. Widths the graph fixes with shape constants (attention projections reshaped to a head
count, residual streams) are never in a group.
"""

from __future__ import annotations

import keyword
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tools.errors import UnsupportedFormatError
from tools.handle import ModelHandle

aten = torch.ops.aten

_LINEAR = {aten.linear.default}
_CONV = {aten.conv1d.default, aten.conv2d.default, aten.convolution.default}
_BATCH_NORM = {aten.batch_norm.default}

# Ops that map channel c of their input to channel c of their output (elementwise, or per channel).
_UNARY = {
    aten.relu.default,
    aten.relu_.default,
    aten.gelu.default,
    aten.silu.default,
    aten.silu_.default,
    aten.sigmoid.default,
    aten.tanh.default,
    aten.hardtanh.default,
    aten.hardtanh_.default,
    aten.hardswish.default,
    aten.hardsigmoid.default,
    aten.leaky_relu.default,
    aten.elu.default,
    aten.mish.default,
    aten.softplus.default,
    aten.relu6.default,
    aten.dropout.default,
    aten.clone.default,
    aten.contiguous.default,
    aten.detach.default,
    aten.alias.default,
}
_BINARY = {
    aten.mul.Tensor,
    aten.add.Tensor,
    aten.sub.Tensor,
    aten.div.Tensor,
    aten.mul.Scalar,
    aten.add.Scalar,
}
# Per-channel ops of feature maps (channel axis 1): only between convolutions.
_SPATIAL = {
    aten.max_pool2d.default,
    aten.avg_pool2d.default,
    aten.max_pool1d.default,
    aten.avg_pool1d.default,
}

LIFTED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class LiftReport:
    """What `lift_layers` did: layer name -> class for each lifted call; name -> reason for each left."""

    lifted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for kind in self.lifted.values():
            counts[kind] = counts.get(kind, 0) + 1
        return {"lifted": counts, "left_in_graph": dict(self.skipped)}


def is_graph_module(model: Any) -> bool:
    return isinstance(model, torch.fx.GraphModule)


def lifted_layers(model: Any) -> list[str]:
    """Names of the graph's layers that are real modules (call_module nodes of LIFTED_TYPES)."""
    if not is_graph_module(model):
        return []
    return [
        str(n.target)
        for n in model.graph.nodes
        if n.op == "call_module" and isinstance(model.get_submodule(str(n.target)), LIFTED_TYPES)
    ]


def lift_layers(gm: torch.fx.GraphModule) -> LiftReport:
    """Lift, in place, each `aten.linear` / conv / batch-norm call on parameters into a real submodule.

    A call is lifted when its weight (and bias, running statistics) are parameters (buffers for the
    statistics) of one holder module, named `<layer>.weight`, `<layer>.bias`, ..., that nothing else in
    the graph reads and that holds nothing else; then `<layer>` becomes the module and the call a
    `call_module` node. Shared (tied) weights, top-level weights and decomposed graphs (addmm) stay as
    they are, listed in the report. The graph module's `train()` / `eval()` become the plain ones (the
    program's mode is baked into its graph; lifted modules are put in eval mode).
    """
    report = LiftReport()
    uses: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            uses[str(node.target)] = uses.get(str(node.target), 0) + len(node.users)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (_LINEAR | _CONV | _BATCH_NORM):
            continue
        made = _layer_for(gm, node, uses)
        if isinstance(made, str):
            name = _holder_name(node)
            if name is not None:
                report.skipped[name] = made
            continue
        name, module, input_node = made
        module.eval()
        module.requires_grad_(False)
        parent, _, child = name.rpartition(".")
        holder_parent = gm.get_submodule(parent) if parent else gm
        holder_parent._modules[child] = module
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, (input_node,))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        attrs = [a for a in node.args[1:] if isinstance(a, torch.fx.Node) and a.op == "get_attr"]
        gm.graph.erase_node(node)
        for attr in attrs:
            if not attr.users:
                gm.graph.erase_node(attr)
        report.lifted[name] = type(module).__name__
    gm.graph.lint()
    gm.recompile()
    # torch.export's module() forbids train()/eval() (its graph has the mode baked in); the lifted tree
    # is edited by tools that call eval() on their copies.
    for attr in ("train", "eval"):
        gm.__dict__.pop(attr, None)
    return report


def _holder_name(node: torch.fx.Node) -> str | None:
    weight = node.args[1] if len(node.args) > 1 else None
    if isinstance(weight, torch.fx.Node) and weight.op == "get_attr":
        return str(weight.target).rpartition(".")[0] or str(weight.target)
    return None


def _param_of(gm: torch.fx.GraphModule, node: Any, uses: dict[str, int], attr: str, name: str) -> Any:
    """The tensor behind get_attr `node` if it is `<name>.<attr>`, read by one node only; else a reason."""
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return f"its {attr} is computed in the graph, not stored"
    target = str(node.target)
    if target != f"{name}.{attr}":
        return f"its {attr} '{target}' is not '{name}.{attr}'"
    if uses.get(target, 0) != 1:
        return f"its {attr} '{target}' is shared with other ops (tied weights)"
    if attr not in ("weight", "bias"):
        return gm.get_buffer(target)
    holder, _, leaf = target.rpartition(".")
    owner = gm.get_submodule(holder)
    if leaf in owner._parameters:
        return owner._parameters[leaf]
    # A TorchScript module converted by TS2EPConverter holds its weights as buffers.
    return nn.Parameter(gm.get_buffer(target), requires_grad=False)


def _layer_for(
    gm: torch.fx.GraphModule, node: torch.fx.Node, uses: dict[str, int]
) -> tuple[str, nn.Module, torch.fx.Node] | str:
    args = list(node.args)
    name = _holder_name(node)
    if name is None:
        return "its weight is not a stored parameter"
    if "." not in str(args[1].target):  # type: ignore[union-attr]
        return "its weight sits on the root module"
    if node.kwargs:
        return "it is called with keyword arguments"
    try:
        holder = gm.get_submodule(name)
    except AttributeError:
        return "its holder module is missing"
    if type(holder) is not nn.Module or any(True for _ in holder.children()):
        return "its holder module holds submodules"
    wanted = {"weight", "bias"}
    if node.target in _BATCH_NORM:
        wanted |= {"running_mean", "running_var", "num_batches_tracked"}
    if (set(holder._parameters) | set(holder._buffers)) - wanted:
        return "its holder module holds other state"
    try:
        weight = _param_of(gm, args[1], uses, "weight", name)
        if isinstance(weight, str):
            return weight
        bias = None
        if len(args) > 2 and args[2] is not None:
            bias = _param_of(gm, args[2], uses, "bias", name)
            if isinstance(bias, str):
                return bias
        if node.target in _LINEAR:
            return _linear(name, weight, bias, args)
        if node.target in _CONV:
            return _conv(name, weight, bias, args, node.target)
        return _batch_norm(gm, name, weight, bias, args, uses)
    except AttributeError as exc:  # get_parameter on a buffer, or the reverse
        return f"its weights are not parameters ({exc})"


def _linear(
    name: str, weight: torch.Tensor, bias: torch.Tensor | None, args: list[Any]
) -> tuple[str, nn.Module, torch.fx.Node] | str:
    if weight.ndim != 2 or len(args) > 3:
        return "not a 2-D linear weight"
    module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    module.weight = weight
    if bias is not None:
        module.bias = bias
    return name, module, args[0]


def _conv(
    name: str, weight: torch.Tensor, bias: torch.Tensor | None, args: list[Any], target: Any
) -> tuple[str, nn.Module, torch.fx.Node] | str:
    dims = weight.ndim - 2
    if dims not in (1, 2):
        return f"a {dims}-D convolution"
    if target is aten.convolution.default:
        # convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
        if len(args) != 9 or args[6]:
            return "a transposed convolution"
        stride, padding, dilation, groups = args[3], args[4], args[5], args[8]
    else:
        # conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)
        rest = [*args[3:], *[None] * 4][:4]
        stride, padding, dilation, groups = rest
        stride = stride if stride is not None else 1
        padding = padding if padding is not None else 0
        dilation = dilation if dilation is not None else 1
        groups = groups if groups is not None else 1
    if isinstance(padding, str):
        return "a convolution with string padding"
    if not all(isinstance(v, int) for v in _ints(stride, padding, dilation, groups)):
        return "a convolution with symbolic strides or padding"
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    module = cls(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=_tuple(stride, dims),
        padding=_tuple(padding, dims),
        dilation=_tuple(dilation, dims),
        groups=groups,
        bias=bias is not None,
        device="meta",
    )
    module.weight = weight
    if bias is not None:
        module.bias = bias
    return name, module, args[0]


def _ints(*values: Any) -> list[Any]:
    flat: list[Any] = []
    for v in values:
        flat.extend(v if isinstance(v, (list, tuple)) else [v])
    return flat


def _tuple(value: Any, dims: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return (
            tuple(int(v) for v in value) if len(value) == dims else tuple(int(value[0]) for _ in range(dims))
        )
    return tuple(int(value) for _ in range(dims))


def _batch_norm(
    gm: torch.fx.GraphModule,
    name: str,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    args: list[Any],
    uses: dict[str, int],
) -> tuple[str, nn.Module, torch.fx.Node] | str:
    # batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled)
    if len(args) != 9 or bias is None or args[5] is not False:
        return "a batch norm in training mode or without affine parameters"
    mean = _param_of(gm, args[3], uses, "running_mean", name)
    var = _param_of(gm, args[4], uses, "running_var", name)
    if isinstance(mean, str) or isinstance(var, str):
        return mean if isinstance(mean, str) else str(var)
    val = args[0].meta.get("val") if isinstance(args[0], torch.fx.Node) else None
    ndim = getattr(val, "ndim", None)
    if ndim not in (2, 3, 4):
        return "a batch norm whose input rank is unknown"
    cls = nn.BatchNorm2d if ndim == 4 else nn.BatchNorm1d
    module = cls(weight.shape[0], eps=float(args[7]), momentum=float(args[6]), device="meta")
    module.weight = weight
    module.bias = bias
    module.running_mean = mean
    module.running_var = var
    holder = gm.get_submodule(name)
    count = holder._buffers.get("num_batches_tracked")
    module.num_batches_tracked = count if count is not None else torch.tensor(0, dtype=torch.long)
    return name, module, args[0]


# ---------------------------------------------------------------------------------------------
# TorchScript and torch.export modules -> module trees


def module_tree(
    handle: ModelHandle, example: Iterable[torch.Tensor] | None = None
) -> tuple[Any, dict[str, Any]]:
    """The handle's model as a module tree torch tools can edit, and what was done to get it.

    Plain nn.Modules come back as they are (no copy). A torch.export graph module is lifted (a
    copy); a TorchScript module is converted with torch's `TS2EPConverter` on `example` inputs (the
    handle's signature), lifted, and checked against the TorchScript module's own outputs. The dict
    says which (`{"converted": "torchscript -> torch.export", "lifted": {...}}`), empty for nn.Modules.
    Raises UnsupportedFormatError when the conversion fails or does not reproduce the outputs.
    """
    from tools.handle import copy_model

    model = handle.model
    if isinstance(model, torch.jit.ScriptModule):
        args = tuple(example) if example is not None else _example(handle)
        gm = _convert_torchscript(model, args)
        _restore_parameters(gm, [name for name, _ in model.named_parameters()])
        _rename_inputs(gm, [a.name for a in model.forward.schema.arguments[1:]])
        report = lift_layers(gm)
        _check_same(model, gm, args)
        return gm, {"converted": "torchscript -> torch.export (TS2EPConverter)", **report.summary()}
    if is_graph_module(model):
        if lifted_layers(model):
            return model, {}
        gm = copy_model(model)
        return gm, lift_layers(gm).summary()
    return model, {}


def _example(handle: ModelHandle) -> tuple[torch.Tensor, ...]:
    from tools.exporting import example_inputs
    from tools.runtime import to_tensors

    return tuple(to_tensors(handle, example_inputs(handle)))


def _restore_parameters(gm: torch.fx.GraphModule, names: list[str]) -> None:
    """The converter holds the TorchScript module's parameters as buffers: make them parameters again
    (same names), so parameter counts and state dicts mean what they meant for the TorchScript module."""
    for name in names:
        holder_name, _, leaf = name.rpartition(".")
        try:
            holder = gm.get_submodule(holder_name) if holder_name else gm
        except AttributeError:
            continue
        tensor = holder._buffers.get(leaf)
        if tensor is not None and tensor.is_floating_point():
            del holder._buffers[leaf]
            holder.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))


def _rename_inputs(gm: torch.fx.GraphModule, names: list[str]) -> None:
    """Give the converted graph the TorchScript forward's argument names (a loaded module's graph calls
    them `obs.1`, which the converter turns into `obs_1`), so what is exported from it is called the same."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    info = getattr(gm.graph._codegen, "pytree_info", None)
    taken = {n.name for n in gm.graph.nodes} - {p.name for p in placeholders}
    if len(placeholders) != len(names) or len(set(names)) != len(names) or taken & set(names):
        return
    if not all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        return
    for node, name in zip(placeholders, names, strict=True):
        node.target = name
        node._rename(name)
    if info is not None and len(info.orig_args) == len(names):
        gm.graph._codegen.pytree_info = info._replace(orig_args=list(names))
    gm.recompile()


def _convert_torchscript(model: Any, args: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    import logging
    import warnings

    from torch._export.converter import TS2EPConverter

    quiet = logging.getLogger("torch._export.converter")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = TS2EPConverter(model, args).convert()
            # The converter's guards come from its example (batch 2); `_check_same` also runs batch 1,
            # where a guard can refuse what the TorchScript module takes: that conversion is refused.
            return program.module()
    except Exception as exc:  # noqa: BLE001 - the converter's failures are many and untyped
        raise UnsupportedFormatError(
            "this TorchScript module could not be converted to a torch.export graph (torch's "
            "TS2EPConverter), which the torch techniques edit; use dynamic_int8 / static_int8 with "
            "backend='onnxruntime', or upload the model as .pt2 or as a state dict with its architecture",
            details=f"{type(exc).__name__}: {str(exc)[:500]}",
        ) from exc
    finally:
        quiet.setLevel(level)


def _check_same(reference: Any, converted: Any, args: tuple[torch.Tensor, ...]) -> None:
    _check_same_at(reference, converted, args)
    if all(a.dim() > 0 and a.shape[0] > 1 for a in args):
        _check_same_at(reference, converted, tuple(a[:1] for a in args))


def _check_same_at(reference: Any, converted: Any, args: tuple[torch.Tensor, ...]) -> None:
    with torch.no_grad():
        want = _first(reference(*args))
        try:
            got = _first(converted(*args))
        except Exception as exc:  # noqa: BLE001 - a converted graph that refuses the module's inputs
            raise UnsupportedFormatError(
                "the torch.export graph converted from this TorchScript module does not run on inputs the "
                "module takes; use dynamic_int8 / static_int8 with backend='onnxruntime' instead",
                details=f"batch {args[0].shape[0] if args and args[0].dim() else '?'}: {str(exc)[:300]}",
            ) from exc
    if want.shape != got.shape or not torch.allclose(want.float(), got.float(), rtol=1e-3, atol=1e-4):
        diff = (want.float() - got.float()).abs().max().item() if want.shape == got.shape else None
        raise UnsupportedFormatError(
            "the torch.export graph converted from this TorchScript module does not reproduce its outputs; "
            "use dynamic_int8 / static_int8 with backend='onnxruntime' instead",
            details=f"shapes {tuple(want.shape)} vs {tuple(got.shape)}, max difference {diff}",
        )


def _first(out: Any) -> torch.Tensor:
    while not isinstance(out, torch.Tensor):
        if isinstance(out, dict):
            out = next(iter(out.values()))
        elif isinstance(out, (tuple, list)) and out:
            out = out[0]
        else:
            raise UnsupportedFormatError(f"the model returns {type(out).__name__}, not tensors")
    return out


# ---------------------------------------------------------------------------------------------
# Portable int8 layers: plain buffers and aten ops, so a .pt2 or TorchScript file holding them loads
# and runs with torch alone (no torchao tensor subclasses, no torch.ao packed-parameter objects).


class Int8WeightLinear(nn.Module):
    """Weight-only int8: `y = x (q * s)^T + b`, q int8 [out, in], s one float scale per output channel."""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = int(qdata.shape[0]), int(qdata.shape[1])
        self.register_buffer("weight_int8", qdata.detach().to(torch.int8).contiguous())
        self.register_buffer("weight_scale", scale.detach().reshape(-1, 1).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_int8.to(x.dtype) * self.weight_scale.to(x.dtype)
        return torch.nn.functional.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))


class Int8DynamicLinear(Int8WeightLinear):
    """Dynamic int8: each input row quantized symmetrically at run time, int8 x int8 -> int32 (`_int_mm`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
        q = torch.round(rows / scale).clamp(-127, 127).to(torch.int8)
        acc = torch._int_mm(q, self.weight_int8.t())
        y = acc.to(x.dtype) * (scale * self.weight_scale.t().to(x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


INT8_LAYERS = (Int8WeightLinear, Int8DynamicLinear)


def portable_int8(model: nn.Module, names: Iterable[str], dynamic: bool) -> None:
    """Replace, in place, the named Linear layers whose weights torchao quantized (Int8Tensor: int8 data
    and one scale per output channel) by `Int8WeightLinear` / `Int8DynamicLinear` holding the same
    int8 data and scales."""
    cls = Int8DynamicLinear if dynamic else Int8WeightLinear
    for name in names:
        old = model.get_submodule(name)
        weight = old.weight
        qdata, scale = getattr(weight, "qdata", None), getattr(weight, "scale", None)
        zero = getattr(weight, "zero_point", None)
        if qdata is None or scale is None or qdata.ndim != 2 or scale.numel() != qdata.shape[0]:
            raise UnsupportedFormatError(
                f"layer '{name}' holds no per-channel int8 weight ({type(weight).__name__}) to store portably"
            )
        if zero is not None and bool((zero != 0).any()):
            raise UnsupportedFormatError(f"layer '{name}' has an asymmetric int8 weight; expected symmetric")
        parent, _, child = name.rpartition(".")
        (model.get_submodule(parent) if parent else model)._modules[child] = cls(qdata, scale, old.bias)


# ---------------------------------------------------------------------------------------------
# Half precision of a whole graph


def cast_graph(gm: torch.fx.GraphModule, dtype: torch.dtype, source: torch.dtype = torch.float32) -> int:
    """Cast a graph module to `dtype` in place: its floating parameters and buffers, and the dtype
    constants its graph baked in at export (`to(float32)`, `arange(dtype=float32)`, tensor-metadata
    asserts), which would otherwise pull activations back to `source` and meet `dtype` weights. Float
    constants beyond `dtype`'s range (attention masks' `finfo(float32).min`) become its largest finite
    value. Returns how many graph constants changed."""
    gm.to(dtype)
    for node in gm.graph.nodes:  # constants the program lifted (plain tensor attributes, not buffers)
        if node.op != "get_attr":
            continue
        holder, _, leaf = str(node.target).rpartition(".")
        owner = gm.get_submodule(holder) if holder else gm
        value = owner.__dict__.get(leaf)
        if isinstance(value, torch.Tensor) and value.dtype == source:
            setattr(owner, leaf, value.to(dtype))
    limit = torch.finfo(dtype).max
    changed = 0

    def retarget(value: Any) -> Any:
        nonlocal changed
        if value is source:
            changed += 1
            return dtype
        if isinstance(value, float) and abs(value) > limit and value not in (float("inf"), float("-inf")):
            changed += 1
            return limit if value > 0 else -limit
        if isinstance(value, (list, tuple)) and not isinstance(value, torch.fx.Node):
            return type(value)(retarget(v) for v in value)
        return value

    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        node.args = tuple(retarget(a) for a in node.args)
        node.kwargs = {k: retarget(v) for k, v in node.kwargs.items()}
    gm.recompile()
    return changed


# ---------------------------------------------------------------------------------------------
# Widths that structured pruning can shrink


@dataclass
class WidthGroup:
    """One hidden width: the output channels of `producers`, read as input channels by `consumers`,
    with per-channel layers (`channel_layers`, batch norms) between them."""

    producers: list[str]
    consumers: list[str]
    channel_layers: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "+".join(self.producers)


def _resizable(module: Any) -> bool:
    if isinstance(module, nn.Linear):
        return type(module) is nn.Linear
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1


def _family(module: nn.Module) -> str:
    return "linear" if isinstance(module, nn.Linear) else "conv"


def width_groups(gm: torch.fx.GraphModule) -> list[WidthGroup]:
    """The widths of a lifted graph module that can be pruned without breaking the graph (see module doc)."""
    modules = dict(gm.named_modules())

    def module_of(node: Any) -> Any:
        return (
            modules.get(str(node.target))
            if isinstance(node, torch.fx.Node) and node.op == "call_module"
            else None
        )

    found: dict[tuple[str, ...], dict[str, Any]] = {}
    for node in gm.graph.nodes:
        consumer = module_of(node)
        if not _resizable(consumer) or not node.args:
            continue
        traced = _trace_back(node.args[0], module_of, _family(consumer))
        if traced is None:
            continue
        producers, channel, interior = traced
        key = tuple(sorted(str(p.target) for p in producers))
        entry = found.setdefault(
            key, {"producers": producers, "channel": set(), "interior": set(), "consumers": []}
        )
        entry["channel"] |= set(channel)
        entry["interior"] |= interior
        entry["consumers"].append(node)
    groups = []
    for key, entry in found.items():
        inside = entry["interior"] | set(entry["consumers"])
        outputs = [*entry["producers"], *entry["interior"]]
        if any(user not in inside for n in outputs for user in n.users):
            continue  # the width reaches something else (a residual add, a reshape, the output)
        widths = {_out_width(module_of(p)) for p in entry["producers"]}
        widths |= {_in_width(module_of(c)) for c in entry["consumers"]}
        widths |= {module_of(c).num_features for c in entry["channel"]}
        if len(widths) != 1 or next(iter(widths)) < 2:
            continue
        groups.append(
            WidthGroup(
                producers=list(key),
                consumers=sorted({str(c.target) for c in entry["consumers"]}),
                channel_layers=sorted(str(c.target) for c in entry["channel"]),
            )
        )
    return groups


def _out_width(module: nn.Module) -> int:
    return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)


def _in_width(module: nn.Module) -> int:
    return int(module.in_features if isinstance(module, nn.Linear) else module.in_channels)


def _trace_back(
    start: Any, module_of: Any, family: str
) -> tuple[list[torch.fx.Node], list[torch.fx.Node], set[torch.fx.Node]] | None:
    """Walk from a consumer's input back to the layers producing it, through channel-preserving ops only."""
    producers: list[torch.fx.Node] = []
    channel: list[torch.fx.Node] = []
    interior: set[torch.fx.Node] = set()
    stack = [start]
    while stack:
        node = stack.pop()
        if not isinstance(node, torch.fx.Node):
            return None
        if node in interior or node in producers:
            continue
        module = module_of(node)
        if _resizable(module):
            if _family(module) != family:
                return None
            producers.append(node)
            continue
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            val = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
            if family == "linear" and getattr(val, "ndim", None) != 2:
                return None  # a batch norm over axis 1 of a sequence is not the linear's channel axis
            channel.append(node)
            interior.add(node)
            stack.append(node.args[0])
            continue
        if node.op != "call_function":
            return None
        nodes = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if any(isinstance(v, torch.fx.Node) for v in node.kwargs.values()):
            return None
        if node.target in _UNARY or (node.target in _SPATIAL and family == "conv"):
            if len(nodes) != 1 or node.args[0] is not nodes[0]:
                return None
        elif node.target not in _BINARY or not nodes:
            return None
        interior.add(node)
        stack.extend(nodes)
    return (producers, channel, interior) if producers else None


def _is_guard(node: torch.fx.Node) -> bool:
    return node.op == "call_module" and str(node.target) == "_guards_fn"


def with_io_casts(
    gm: torch.fx.GraphModule, floating: list[bool], compute: torch.dtype, contract: torch.dtype
) -> torch.fx.GraphModule:
    """A copy of `gm` whose graph casts its floating inputs (`floating[i]` for user input i) to `compute`
    and its floating outputs to `contract` (torch.export traces a graph module's graph, not its hooks)."""
    from tools.handle import copy_model

    out = copy_model(gm)
    graph = out.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for node, is_float in zip(placeholders, floating, strict=False):
        if not is_float:
            continue
        with graph.inserting_after(node):
            cast = graph.call_function(aten.to.dtype, (node, compute))
        # The input guards still see the input as given.
        node.replace_all_uses_with(
            cast, delete_user_cb=lambda user, c=cast: user is not c and not _is_guard(user)
        )
    output = next(n for n in graph.nodes if n.op == "output")

    def cast_out(value: Any) -> Any:
        if isinstance(value, torch.fx.Node):
            val = value.meta.get("val")
            if isinstance(val, torch.Tensor) and val.is_floating_point():
                with graph.inserting_before(output):
                    return graph.call_function(aten.to.dtype, (value, contract))
            return value
        if isinstance(value, (list, tuple)):
            return type(value)(cast_out(v) for v in value)
        if isinstance(value, dict):
            return {k: cast_out(v) for k, v in value.items()}
        return value

    output.args = tuple(cast_out(a) for a in output.args)
    graph.lint()
    out.recompile()
    return out


def for_tracing(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """`gm` ready for `torch.jit.trace`, with its dynamic sizes kept dynamic.

    The tracer records a size read (`x.size(d)`) as dynamic, but an int an op returns as a constant,
    which would freeze the batch size: `sym_size` calls become size reads, `scalar_tensor` of a size a
    tensor of it, and the shape asserts torch.export added (checks on Python ints, which the tracer
    cannot evaluate on traced sizes) are dropped with the comparisons feeding them. A new graph module
    over the same parameters; `gm` itself when there is nothing to change.
    """
    import copy
    import operator

    if not any(n.op == "call_function" and n.target is aten.sym_size.int for n in gm.graph.nodes):
        return gm
    graph = copy.deepcopy(gm.graph)
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.sym_size.int:
            with graph.inserting_before(node):
                size = graph.call_method("size", tuple(node.args))
            node.replace_all_uses_with(size)
            graph.erase_node(node)
        elif node.target is aten.scalar_tensor.default and isinstance(node.args[0], torch.fx.Node):
            with graph.inserting_before(node):
                tensor = graph.call_function(_size_tensor, tuple(node.args), dict(node.kwargs))
            node.replace_all_uses_with(tensor)
            graph.erase_node(node)
        elif node.target is aten._assert_scalar.default:
            graph.erase_node(node)
    # An aten overload turns a traced size into a constant; the Python API (what a traced model's own
    # code calls: `x.view(b, -1)`, `torch.arange(n)`) records it.
    sizes = {n for n in graph.nodes if n.op == "call_method" and n.target == "size"}
    for node in graph.nodes:
        if node in sizes or node.op != "call_function":
            continue
        feeds = [a for a in _flat_args(node) if isinstance(a, torch.fx.Node) and a in sizes]
        if not feeds:
            continue
        if not isinstance(node.target, torch._ops.OpOverload):
            sizes.add(node)  # Python arithmetic on sizes: still a size
            continue
        python = _python_op(node.target)
        if python is not None:
            node.target = python
    python_ops = {v for v in vars(operator).values() if callable(v)}
    changed = True
    while changed:  # the comparisons that only fed the asserts
        changed = False
        for node in list(graph.nodes):
            if node.op == "call_function" and node.target in python_ops and not node.users:
                graph.erase_node(node)
                changed = True
    out = torch.fx.GraphModule(gm, graph)
    for attr in ("_in_spec", "_out_spec"):
        if hasattr(gm, attr):
            setattr(out, attr, getattr(gm, attr))
    return out


def _flat_args(node: torch.fx.Node) -> list[Any]:
    flat: list[Any] = []
    for value in [*node.args, *node.kwargs.values()]:
        flat.extend(value if isinstance(value, (list, tuple)) else [value])
    return flat


def _python_op(overload: Any) -> Any:
    """The Python function (`torch.Tensor.view`, `torch.arange`) of an aten overload, or None."""
    name = overload._schema.name.split("::")[-1]
    if name in ("view", "reshape", "expand", "new_ones", "new_zeros", "new_full", "new_empty", "repeat"):
        return getattr(torch.Tensor, name)
    if name in ("arange", "full", "zeros", "ones", "empty", "scalar_tensor"):
        return getattr(torch, name)
    return None


def _size_tensor(
    value: Any, dtype: Any = None, layout: Any = None, device: Any = None, pin_memory: Any = None
) -> Any:
    """`aten.scalar_tensor` of a size that may be traced (a tensor while `torch.jit.trace` runs)."""
    return torch.as_tensor(value, dtype=dtype, device=device)
