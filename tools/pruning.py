"""Pruning: unstructured magnitude, structured (channels, neurons, attention heads), and 2:4 sparsity.

- `magnitude`: zeroes the smallest-|w| weights of Linear/Conv layers (torch) or of the weight
  initializers of MatMul/Gemm/Conv nodes (ONNX), globally ranked or per layer. The zeros are
  permanent (`torch.nn.utils.prune.remove`); the file only shrinks once compressed or sparse-stored,
  latency does not drop on dense kernels: this is the step before sparse formats or structured pruning.
- `structured`: removes whole output channels / hidden neurons with torch-pruning's dependency graph,
  so every coupled layer is resized (the parameter count and latency really drop), and whole
  attention heads of the registry's `Attention` modules (rows of q/k/v, columns of o). The
  network's output layer and its input dimensions are never pruned; residual-stream widths are kept.
  On ONNX graphs (tools.onnx_pruning): MLP hidden and conv channel groups, with their consumers'
  input rows; attention, residual widths and norms are never touched. On TorchScript and torch.export
  models (their lifted module tree, tools.graph_modules) likewise: only the widths the graph leaves free
  (MLP hidden neurons, channels inside conv blocks with their batch norms); the result says so.
- `semi_structured_2_4`: keeps the 2 largest of every 4 consecutive input weights of each Linear and
  stores them as `torch.sparse` semi-structured tensors (CUTLASS / cuSPARSELt kernels): CUDA only,
  fp16/bf16 weights.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from tools.errors import (
    DependencyMissingError,
    InvalidArgumentError,
    UnknownMethodError,
    UnsupportedDeviceError,
    UnsupportedFormatError,
)
from tools.handle import ModelHandle
from tools.runtime import synthesize_inputs, to_tensors

PRUNE_METHODS: tuple[str, ...] = ("magnitude", "structured", "semi_structured_2_4")
Scope = Literal["global", "per_layer"]

_ONNX_WEIGHT_OPS = {"MatMul": 1, "Gemm": 1, "Conv": 1}
# Above this many selected weights, magnitude pruning masks in place (see _magnitude_torch).
_LARGE_MODEL_WEIGHTS = 50_000_000
_THRESHOLD_SAMPLE = 10_000_000
_ONNX_QUANTIZED_OPS = {
    "DequantizeLinear",
    "QuantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "MatMulNBits",
    "DynamicQuantizeMatMul",
}


def prune(
    handle: ModelHandle,
    method: str,
    amount: float,
    *,
    scope: Scope = "global",
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    seed: int = 0,
) -> ModelHandle:
    """A new handle with `amount` (0 < amount < 1) of the selected weights pruned by `method`.

    include / exclude are fnmatch patterns on module names (torch) or initializer / node names (ONNX).
    The input handle is never modified.
    """
    if method not in PRUNE_METHODS:
        raise UnknownMethodError(f"unknown pruning method '{method}'; choose one of {list(PRUNE_METHODS)}")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 < float(amount) < 1.0:
        raise InvalidArgumentError(f"amount must be a fraction strictly between 0 and 1, got {amount!r}")
    if scope not in ("global", "per_layer"):
        raise InvalidArgumentError(f"scope must be 'global' or 'per_layer', got {scope!r}")
    amount = float(amount)
    step: dict[str, Any] = {
        "tool": "prune",
        "method": method,
        "amount": amount,
        "scope": scope,
        "include": include,
        "exclude": exclude,
        "seed": seed,
    }
    if method == "magnitude":
        if handle.runtime == "onnx":
            model, result = _magnitude_onnx(handle, amount, scope, include, exclude)
        else:
            model, result = _magnitude_torch(handle, amount, scope, include, exclude)
        return handle.with_step(model, {**step, "result": result})
    if method == "structured":
        if handle.runtime == "onnx":
            from tools.onnx_pruning import prune_structured_onnx

            model, result = prune_structured_onnx(handle, amount, scope, include, exclude, seed)
            return handle.with_step(model, {**step, "result": result})
        model, result = _structured(handle, amount, scope, include, exclude, seed)
        return handle.with_step(model, {**step, "result": result}, architecture=_resized_ref(handle, model))
    model, result, device = _semi_structured(handle, amount, include, exclude)
    return handle.with_step(model, {**step, "result": result}, device=device)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _selected(name: str, include: list[str] | None, exclude: list[str] | None) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude))


def _torch_only(handle: ModelHandle, method: str) -> None:
    if handle.runtime != "torch":
        raise UnsupportedFormatError(
            f"'{method}' pruning needs a PyTorch model; this one is {handle.format}. "
            "Use 'magnitude' or 'structured' for ONNX graphs, or upload the PyTorch weights."
        )


_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _weight_targets(
    model: nn.Module, include: list[str] | None, exclude: list[str] | None
) -> list[tuple[str, nn.Module | None, str, torch.Tensor]]:
    """(qualified name, owning module or None, attribute, tensor) of each prunable float weight.

    Linear/Conv modules where the model has them; for graphs without module structure (TorchScript,
    exported programs) every floating `*weight` parameter of rank >= 2.
    """
    targets: list[tuple[str, nn.Module | None, str, torch.Tensor]] = []
    has_modules = not isinstance(model, torch.jit.ScriptModule) and any(
        isinstance(m, _PRUNABLE) for m in model.modules()
    )
    if has_modules:
        for name, module in model.named_modules():
            if isinstance(module, _PRUNABLE) and isinstance(module.weight, torch.Tensor):
                w = module.weight
                if (
                    w.is_floating_point()
                    and type(w) in (torch.Tensor, nn.Parameter)
                    and _selected(name, include, exclude)
                ):
                    targets.append((name, module, "weight", w))
    else:
        for pname, p in model.named_parameters():
            if type(p) not in (torch.Tensor, nn.Parameter):  # quantized tensor subclasses (torchao)
                continue
            if p.ndim >= 2 and p.is_floating_point() and pname.split(".")[-1].endswith("weight"):
                mname = pname.rsplit(".", 1)[0] if "." in pname else pname
                if _selected(mname, include, exclude):
                    targets.append((mname, None, pname, p))
    return targets


def quantization_backend(model: Any) -> str | None:
    """The library that quantized a torch model's weights, or None for float weights."""
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return None
    from tools.graph_modules import INT8_LAYERS

    for module in model.modules():
        root = type(module).__module__
        if isinstance(module, INT8_LAYERS):
            return "torchao int8 weights"
        if root.startswith(("torch.ao.nn.quantized", "torch.nn.quantized", "bitsandbytes")):
            return root.split(".")[0] if root.startswith("bitsandbytes") else "torch.ao"
    for p in model.parameters():
        if type(p) not in (torch.Tensor, nn.Parameter):
            return type(p).__module__.split(".")[0]
    return None


def _refuse_quantized(model: Any, method: str) -> None:
    backend = quantization_backend(model)
    if backend is not None:
        raise UnsupportedFormatError(
            f"'{method}' pruning needs float weights and this model is already quantized ({backend}); "
            "prune the float model first, then quantize it"
        )


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# magnitude (torch)
# --------------------------------------------------------------------------------------------


def _magnitude_torch(
    handle: ModelHandle, amount: float, scope: Scope, include: list[str] | None, exclude: list[str] | None
) -> tuple[Any, dict[str, Any]]:
    import torch.nn.utils.prune as tprune

    model = handle.clone().model
    targets = _weight_targets(model, include, exclude)
    if not targets and not (include or exclude):
        _refuse_quantized(model, "magnitude")
    if not targets:
        raise InvalidArgumentError(
            "no float Linear/Conv weights to prune"
            + (" match the include/exclude patterns" if include or exclude else " (already quantized?)"),
        )
    total_weights = sum(t.numel() for _, _, _, t in targets)
    with torch.no_grad():
        modular = [(m, attr) for _, m, attr, _ in targets if m is not None]
        if total_weights > _LARGE_MODEL_WEIGHTS:
            # Billions of weights: torch.nn.utils.prune would hold a score vector, a mask and a copy
            # of every weight at once. Mask in place instead; the global threshold is the quantile of
            # an evenly strided sample of the magnitudes (exact per layer).
            tensors = [t for _, _, _, t in targets]
            if scope == "global":
                stride = max(1, total_weights // _THRESHOLD_SAMPLE)
                sample = torch.cat([t.detach().abs().flatten()[::stride].float().cpu() for t in tensors])
                threshold = _kth_abs(sample, amount)
                for t in tensors:
                    _zero_at_most(t, threshold, amount, global_scope=True)
            else:
                for t in tensors:
                    _zero_at_most(t, _kth_abs(t.detach().abs().flatten().float(), amount), amount)
        elif len(modular) == len(targets):
            if scope == "global":
                tprune.global_unstructured(modular, pruning_method=tprune.L1Unstructured, amount=amount)
            else:
                for module, attr in modular:
                    tprune.l1_unstructured(module, attr, amount=amount)
            for module, attr in modular:
                tprune.remove(module, attr)  # permanent: weight = weight_orig * mask
        else:
            # No module structure (TorchScript / exported graph): mask the tensors in place.
            tensors = [t for _, _, _, t in targets]
            if scope == "global":
                threshold = _kth_abs(torch.cat([t.detach().abs().flatten().float() for t in tensors]), amount)
                for t in tensors:
                    _zero_at_most(t, threshold, amount, global_scope=True)
            else:
                for t in tensors:
                    _zero_at_most(t, _kth_abs(t.detach().abs().flatten().float(), amount), amount)
    final = [(name, t if m is None else getattr(m, attr)) for name, m, attr, t in targets]
    zeros = sum(int((t == 0).sum()) for _, t in final)
    total = sum(t.numel() for _, t in final)
    layers = {name: _sparsity(t) for name, t in final}
    return model, {"pruned_layers": len(targets), "sparsity": zeros / total, "layer_sparsity": layers}


def _kth_abs(values: torch.Tensor, amount: float) -> float:
    k = int(round(amount * values.numel()))
    if k <= 0:
        return -1.0
    return float(torch.kthvalue(values, k).values)


def _zero_at_most(t: torch.Tensor, threshold: float, amount: float, *, global_scope: bool = False) -> None:
    if threshold < 0:
        return
    mask = t.detach().abs().float() <= threshold
    if not global_scope:
        # Ties at the threshold would overshoot the amount: keep only the k smallest by index order.
        k = int(round(amount * t.numel()))
        flat = mask.flatten()
        if int(flat.sum()) > k:
            idx = torch.topk(t.detach().abs().flatten().float(), k, largest=False).indices
            flat = torch.zeros_like(flat)
            flat[idx] = True
            mask = flat.view_as(t)
    t.data.masked_fill_(mask, 0)


def _sparsity(t: torch.Tensor) -> float:
    return float((t.detach() == 0).sum()) / max(t.numel(), 1)


# --------------------------------------------------------------------------------------------
# magnitude (ONNX)
# --------------------------------------------------------------------------------------------


def _magnitude_onnx(
    handle: ModelHandle, amount: float, scope: Scope, include: list[str] | None, exclude: list[str] | None
) -> tuple[Any, dict[str, Any]]:
    from onnx import numpy_helper

    model = handle.clone().model
    inits = {t.name: t for t in model.graph.initializer}
    chosen: dict[str, Any] = {}
    for node in model.graph.node:
        idx = _ONNX_WEIGHT_OPS.get(node.op_type)
        if idx is None or len(node.input) <= idx:
            continue
        name = node.input[idx]
        init = inits.get(name)
        if init is None or name in chosen:
            continue
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind != "f" or arr.ndim < 2:
            continue
        if not (_selected(name, include, exclude) or (node.name and _selected(node.name, include, exclude))):
            continue
        chosen[name] = arr
    if not chosen and not (include or exclude):
        quantized_ops = {n.op_type for n in model.graph.node} & _ONNX_QUANTIZED_OPS
        if quantized_ops:
            raise UnsupportedFormatError(
                f"'magnitude' pruning needs float weights and this ONNX model is already quantized "
                f"({', '.join(sorted(quantized_ops))}); prune the float model first, then quantize it"
            )
    if not chosen:
        raise InvalidArgumentError(
            "no float weight initializers of MatMul/Gemm/Conv nodes to prune"
            + (" match the include/exclude patterns" if include or exclude else " (already quantized?)")
        )
    if scope == "global":
        allabs = np.concatenate([np.abs(a).ravel().astype(np.float32) for a in chosen.values()])
        k = int(round(amount * allabs.size))
        threshold = np.partition(allabs, k - 1)[k - 1] if k > 0 else -1.0
        thresholds = dict.fromkeys(chosen, threshold)
    else:
        thresholds = {}
        for name, arr in chosen.items():
            flat = np.abs(arr).ravel().astype(np.float32)
            k = int(round(amount * flat.size))
            thresholds[name] = np.partition(flat, k - 1)[k - 1] if k > 0 else -1.0
    layers: dict[str, float] = {}
    zeros = total = 0
    for name, arr in chosen.items():
        pruned = np.where(np.abs(arr).astype(np.float32) <= thresholds[name], 0, arr).astype(arr.dtype)
        inits[name].CopyFrom(numpy_helper.from_array(pruned, name))
        nz = int((pruned == 0).sum())
        layers[name] = nz / pruned.size
        zeros += nz
        total += pruned.size
    return model, {"pruned_layers": len(chosen), "sparsity": zeros / total, "layer_sparsity": layers}


# --------------------------------------------------------------------------------------------
# structured
# --------------------------------------------------------------------------------------------


def _is_attention(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "num_heads")) and all(
        isinstance(getattr(module, a), nn.Linear) for a in ("q_proj", "k_proj", "v_proj", "o_proj")
    )


def _execution_order(model: nn.Module, example: list[torch.Tensor]) -> list[nn.Module]:
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in model.modules()
        if isinstance(m, (*_PRUNABLE, nn.Embedding))
    ]
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    return order


def _structured(
    handle: ModelHandle,
    amount: float,
    scope: Scope,
    include: list[str] | None,
    exclude: list[str] | None,
    seed: int,
) -> tuple[Any, dict[str, Any]]:
    _torch_only(handle, "structured")
    if isinstance(handle.model, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        return _structured_graph(handle, amount, scope, include, exclude, seed)
    if not isinstance(handle.model, nn.Module):
        raise UnsupportedFormatError(
            f"structured pruning needs an nn.Module, got {type(handle.model).__name__}"
        )
    _refuse_quantized(handle.model, "structured")
    model: nn.Module = handle.clone().model
    params_before = _count_params(model)
    example = to_tensors(handle, synthesize_inputs(handle.inputs, 2, seed=seed))
    names = {m: n for n, m in model.named_modules()}

    order = _execution_order(model, example)
    linears = [m for m in order if isinstance(m, _PRUNABLE)]
    if not linears:
        raise InvalidArgumentError("the model has no Linear/Conv layers to prune structurally")
    # The output layer decides the output shape: never prune it (its inputs may shrink).
    ignored: set[nn.Module] = {linears[-1]}
    for m in model.modules():
        if isinstance(m, _PRUNABLE) and not _selected(names[m], include, exclude):
            ignored.add(m)
    attention = [m for m in model.modules() if _is_attention(m)]
    for attn in attention:
        # Heads are removed below as whole (q, k, v, o) groups; the dependency graph must not split them.
        ignored.update({attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj})

    heads_removed = 0
    for attn in attention:
        if _selected(names[attn], include, exclude):
            heads_removed += _prune_heads(attn, amount)

    groups = [p for p in _width_groups(model) if _selected(p.name, include, exclude)]
    groups = [p for p in groups if linears[-1] not in p.producers]
    if attention or (_from_transformers(model) and groups):
        # Transformers: the dependency tracer cannot follow rotary embeddings and token concatenation,
        # so the hidden widths of the MLP blocks (fc1->fc2, SwiGLU gate/up->down, projector) are
        # pruned as explicit producer/consumer groups; residual-stream widths stay.
        # A Hugging Face model's attention (query/key/value, fused or grouped heads) is left whole.
        pruned = _prune_width_groups(groups, amount, scope)
        params_after = _count_params(model)
        if params_after >= params_before:
            raise InvalidArgumentError(
                "nothing could be pruned structurally with these include/exclude patterns"
            )
        with torch.no_grad():
            model(*example)
        return model, {
            "params_before": params_before,
            "params_after": params_after,
            "params_removed_fraction": 1.0 - params_after / params_before,
            "pruned_groups": pruned,
            "heads_removed": heads_removed,
            "engine": "width_groups",
        }

    try:
        import torch_pruning as tp
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DependencyMissingError(
            "structured pruning needs torch-pruning (pip install torch-pruning)"
        ) from exc

    candidate_groups = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pruner = tp.pruner.BasePruner(
                model,
                example_inputs=tuple(example) if len(example) > 1 else example[0],
                importance=tp.importance.GroupMagnitudeImportance(p=2),
                global_pruning=scope == "global",
                pruning_ratio=amount,
                # Global ranking may thin some layers much more than others, never below 10% of a layer
                # (unless the asked amount is itself above 90%).
                max_pruning_ratio=max(amount, 0.9),
                ignored_layers=list(ignored),
            )
        except Exception as exc:  # the tracer's failures are many and untyped
            raise UnsupportedFormatError(
                "structured pruning could not trace this model's layer dependencies; try 'magnitude' pruning",
                details=f"{type(exc).__name__}: {exc}",
            ) from exc
        for _group in pruner.DG.get_all_groups(
            ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
        ):
            candidate_groups += 1
        if candidate_groups:
            pruner.step()
    params_after = _count_params(model)
    if params_after >= params_before:
        raise InvalidArgumentError(
            "nothing could be pruned structurally: every layer is an output layer, attention that is "
            "excluded, or excluded by the include/exclude patterns"
        )
    with torch.no_grad():  # the result must still run
        model(*example)
    return model, {
        "params_before": params_before,
        "params_after": params_after,
        "params_removed_fraction": 1.0 - params_after / params_before,
        "pruned_groups": candidate_groups,
        "heads_removed": heads_removed,
    }


@dataclass
class _WidthGroup:
    """Hidden channels shared by producers (output rows) and consumers (input columns)."""

    name: str
    producers: list[nn.Linear]
    consumers: list[nn.Linear]

    @property
    def width(self) -> int:
        return self.producers[0].out_features


def _from_transformers(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("transformers.") for m in model.modules())


def _width_groups(model: nn.Module) -> list[_WidthGroup]:
    groups: list[_WidthGroup] = []
    for name, m in model.named_modules():
        # BERT / ViT style blocks: intermediate.dense widens, output.dense narrows back.
        inner = getattr(getattr(m, "intermediate", None), "dense", None)
        outer = getattr(getattr(m, "output", None), "dense", None)
        if (
            isinstance(inner, nn.Linear)
            and isinstance(outer, nn.Linear)
            and inner.out_features == outer.in_features
        ):
            groups.append(_WidthGroup(f"{name}.intermediate", [inner], [outer]))
        lin = {a: getattr(m, a, None) for a in ("fc1", "fc2", "fc3", "gate_proj", "up_proj", "down_proj")}
        lin = {a: v for a, v in lin.items() if isinstance(v, nn.Linear)}
        if {"gate_proj", "up_proj", "down_proj"} <= lin.keys():
            groups.append(_WidthGroup(name, [lin["gate_proj"], lin["up_proj"]], [lin["down_proj"]]))
        if {"fc1", "fc2"} <= lin.keys() and lin["fc1"].out_features == lin["fc2"].in_features:
            groups.append(_WidthGroup(f"{name}.fc1" if "fc3" in lin else name, [lin["fc1"]], [lin["fc2"]]))
            if "fc3" in lin and lin["fc2"].out_features == lin["fc3"].in_features:
                groups.append(_WidthGroup(f"{name}.fc2", [lin["fc2"]], [lin["fc3"]]))
    return groups


def _channel_scores(group: _WidthGroup) -> torch.Tensor:
    with torch.no_grad():
        score = sum(p.weight.detach().float().pow(2).sum(1) for p in group.producers)
        score = score + sum(c.weight.detach().float().pow(2).sum(0) for c in group.consumers)
    return score.sqrt()


def _prune_width_groups(groups: list[_WidthGroup], amount: float, scope: Scope) -> int:
    """Remove the lowest-L2 hidden channels, per group or ranked globally (scores normalised per group)."""
    if not groups:
        return 0
    scores = [_channel_scores(g) for g in groups]
    removes = _removal_counts(scores, amount, scope)
    pruned = 0
    for group, score, remove in zip(groups, scores, removes, strict=True):
        if remove <= 0:
            continue
        keep = torch.sort(torch.argsort(score, descending=True)[: score.numel() - remove]).values
        for lin in group.producers:
            _keep_rows(lin, keep)
        for lin in group.consumers:
            _keep_cols(lin, keep)
        pruned += 1
    return pruned


def _removal_counts(scores: list[torch.Tensor], amount: float, scope: Scope) -> list[int]:
    """Channels to remove per group: `amount` of each, or of all ranked together (scores normalised per
    group, no group thinned past max(amount, 90%), every group keeps at least one channel)."""
    if scope == "global":
        normed = [s / s.mean().clamp_min(1e-12) for s in scores]
        flat = torch.cat(normed)
        k = int(amount * flat.numel())
        threshold = torch.kthvalue(flat, k).values if k > 0 else flat.min() - 1
        cap = max(amount, 0.9)
        return [min(int((s <= threshold).sum()), int(cap * s.numel()), s.numel() - 1) for s in normed]
    return [min(int(amount * s.numel()), s.numel() - 1) for s in scores]


def _structured_graph(
    handle: ModelHandle,
    amount: float,
    scope: Scope,
    include: list[str] | None,
    exclude: list[str] | None,
    seed: int,
) -> tuple[Any, dict[str, Any]]:
    """Structured pruning of a TorchScript / torch.export model, on its lifted module tree.

    A graph fixes shapes with constants (attention reshapes to a head count, residual widths), so only
    the widths `tools.graph_modules.width_groups` proves free are shrunk: hidden neurons of MLP blocks
    (fc1 -> act -> fc2, SwiGLU gate/up -> down) and channels between convolutions inside a block (with
    their batch norms). The result names the layers whose widths stayed.
    """
    from tools.graph_modules import module_tree, width_groups
    from tools.handle import copy_model

    tree, how = module_tree(handle)
    model = copy_model(tree) if tree is handle.model else tree
    _refuse_quantized(model, "structured")
    params_before = _count_params(model)
    groups = width_groups(model)
    chosen = [g for g in groups if all(_selected(p, include, exclude) for p in g.producers)]
    layers = [n for n, m in model.named_modules() if n and isinstance(m, _PRUNABLE)]
    if not chosen:
        raise InvalidArgumentError(
            "nothing could be pruned structurally: "
            + (
                "no prunable width passes the include/exclude patterns"
                if groups
                else "this graph has no hidden width between layers joined only by elementwise ops (its "
                "layer widths are fixed by reshapes, residual adds or the output); use 'magnitude' pruning"
            ),
            details=f"layers: {', '.join(layers[:12])}",
        )
    scores = [_graph_scores(model, g) for g in chosen]
    removes = _removal_counts(scores, amount, scope)
    pruned = 0
    for group, score, remove in zip(chosen, scores, removes, strict=True):
        if remove <= 0:
            continue
        keep = torch.sort(torch.argsort(score, descending=True)[: score.numel() - remove]).values
        for name in group.producers:
            _keep_out(model.get_submodule(name), keep)
        for name in group.channel_layers:
            _keep_channels(model.get_submodule(name), keep)
        for name in group.consumers:
            _keep_in(model.get_submodule(name), keep)
        pruned += 1
    params_after = _count_params(model)
    if params_after >= params_before:
        raise InvalidArgumentError("nothing could be pruned structurally at this amount; use a larger amount")
    example = to_tensors(handle, synthesize_inputs(handle.inputs, 2, seed=seed))
    try:
        with torch.no_grad():
            model(*example)
    except Exception as exc:  # noqa: BLE001 - a graph this pruning broke must not pass as a result
        raise UnsupportedFormatError(
            "the pruned graph does not run; use 'magnitude' pruning", details=str(exc)[:500]
        ) from exc
    resized = {p for g in chosen for p in (*g.producers, *g.consumers)}
    result: dict[str, Any] = {
        "params_before": params_before,
        "params_after": params_after,
        "params_removed_fraction": 1.0 - params_after / params_before,
        "pruned_groups": pruned,
        "heads_removed": 0,
        "engine": "graph_width_groups",
        "restricted": (
            "a graph fixes some widths with shape constants (attention heads, residual streams), so only "
            "hidden widths between layers joined by elementwise ops were pruned; the layers in kept_layers "
            "keep their shapes"
        ),
        "kept_layers": [n for n in layers if n not in resized],
    }
    if how:
        result["module_tree"] = how
    return model, result


def _graph_scores(model: nn.Module, group: Any) -> torch.Tensor:
    with torch.no_grad():
        score = sum(
            model.get_submodule(n).weight.detach().float().flatten(1).pow(2).sum(1) for n in group.producers
        )
        score = score + sum(
            model.get_submodule(n).weight.detach().float().transpose(0, 1).flatten(1).pow(2).sum(1)
            for n in group.consumers
        )
    return score.sqrt()


def _keep_out(layer: nn.Module, keep: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight.detach()[keep].clone(), requires_grad=False)
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach()[keep].clone(), requires_grad=False)
    if isinstance(layer, nn.Linear):
        layer.out_features = int(keep.numel())
    else:
        layer.out_channels = int(keep.numel())


def _keep_in(layer: nn.Module, keep: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight.detach()[:, keep].clone(), requires_grad=False)
    if isinstance(layer, nn.Linear):
        layer.in_features = int(keep.numel())
    else:
        layer.in_channels = int(keep.numel())


def _keep_channels(norm: nn.Module, keep: torch.Tensor) -> None:
    norm.weight = nn.Parameter(norm.weight.detach()[keep].clone(), requires_grad=False)
    norm.bias = nn.Parameter(norm.bias.detach()[keep].clone(), requires_grad=False)
    norm.running_mean = norm.running_mean[keep].clone()
    norm.running_var = norm.running_var[keep].clone()
    norm.num_features = int(keep.numel())


def _resized_ref(handle: ModelHandle, pruned: nn.Module) -> Any:
    """The architecture reference with the new widths recorded, so the pruned state dict loads back."""
    ref = handle.architecture
    if ref is None:
        return None
    from tools.architectures import canonical_ref, resized_between

    canon = canonical_ref(ref)
    resized = {k: dict(v) for k, v in canon.config.get("resized", {}).items()}
    for name, attrs in resized_between(handle.model, pruned).items():
        resized.setdefault(name, {}).update(attrs)
    return type(ref)(name=canon.name, config={**canon.config, "resized": resized})


def _prune_heads(attn: nn.Module, amount: float) -> int:
    """Remove the lowest-L2-norm heads of one attention module; returns how many were removed."""
    heads = int(attn.num_heads)
    remove = min(int(amount * heads), heads - 1)
    if remove <= 0:
        return 0
    q, k, v, o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
    head_dim = q.out_features // heads
    with torch.no_grad():
        score = sum(
            lin.weight.detach().float().view(heads, head_dim, -1).pow(2).sum(dim=(1, 2)) for lin in (q, k, v)
        ) + o.weight.detach().float().view(o.out_features, heads, head_dim).pow(2).sum(dim=(0, 2))
    keep_heads = torch.sort(torch.argsort(score, descending=True)[: heads - remove]).values
    keep = (keep_heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).flatten()
    for lin in (q, k, v):
        _keep_rows(lin, keep)
    _keep_cols(o, keep)
    attn.num_heads = heads - remove
    return remove


def _keep_rows(lin: nn.Linear, keep: torch.Tensor) -> None:
    lin.weight = nn.Parameter(lin.weight.detach()[keep].clone())
    if lin.bias is not None:
        lin.bias = nn.Parameter(lin.bias.detach()[keep].clone())
    lin.out_features = int(keep.numel())


def _keep_cols(lin: nn.Linear, keep: torch.Tensor) -> None:
    lin.weight = nn.Parameter(lin.weight.detach()[:, keep].clone())
    lin.in_features = int(keep.numel())


# --------------------------------------------------------------------------------------------
# 2:4 semi-structured sparsity (CUDA)
# --------------------------------------------------------------------------------------------


def _semi_structured(
    handle: ModelHandle, amount: float, include: list[str] | None, exclude: list[str] | None
) -> tuple[Any, dict[str, Any], str]:
    _torch_only(handle, "semi_structured_2_4")
    if not torch.cuda.is_available():
        raise UnsupportedDeviceError(
            "2:4 semi-structured sparsity runs on NVIDIA GPUs (Ampere or newer) only; this machine has no "
            "CUDA device. Use 'magnitude' or 'structured' pruning on CPU."
        )
    if abs(amount - 0.5) > 1e-9:
        raise InvalidArgumentError(
            f"2:4 sparsity always removes exactly half of the weights; pass amount=0.5 (got {amount})"
        )
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    if isinstance(handle.model, torch.jit.ScriptModule):
        from tools.graph_modules import module_tree

        model: nn.Module = module_tree(handle)[0]  # the TorchScript graph as a tree of nn.Linear layers
    else:
        model = handle.clone().model
    device = handle.device if handle.device.startswith("cuda") else "cuda"
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if dtype not in (torch.float16, torch.bfloat16):
        # The sparse kernels take fp16/bf16; cast the whole model so activations match.
        dtype = torch.float16
    model = model.to(device=device, dtype=dtype)
    converted: list[str] = []
    skipped: dict[str, str] = {}
    constraints = SparseSemiStructuredTensor._DTYPE_SHAPE_CONSTRAINTS
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not _selected(name, include, exclude):
            continue
        rows, cols = module.weight.shape
        cons = constraints.get(dtype) if isinstance(constraints, dict) else None
        if cons is not None and (rows % cons.sparse_min_rows or cols % cons.sparse_min_cols):
            skipped[name] = f"shape {rows}x{cols} is not a multiple of the sparse tile"
            continue
        with torch.no_grad():
            w = module.weight.detach()
            mask = _two_four_mask(w)
            try:
                module.weight = nn.Parameter(to_sparse_semi_structured(w * mask), requires_grad=False)
            except (RuntimeError, ValueError) as exc:
                skipped[name] = str(exc).splitlines()[0]
                continue
        converted.append(name)
    if not converted:
        raise InvalidArgumentError(
            "no Linear layer could take 2:4 sparsity (weights need both sides multiples of the sparse tile, "
            "e.g. 64)",
            details=str(skipped),
        )
    return model, {"sparse_layers": converted, "skipped": skipped, "dtype": str(dtype).split(".")[-1]}, device


def _two_four_mask(w: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 consecutive weights along the input dimension."""
    rows, cols = w.shape
    groups = w.detach().abs().float().reshape(rows, cols // 4, 4)
    top = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(rows, cols).to(w.dtype)


def sparsity_of(handle: ModelHandle, names: Iterable[str] | None = None) -> float:
    """Fraction of exact zeros over the prunable weights (all, or those of the named layers)."""
    wanted = set(names) if names is not None else None
    if handle.runtime == "onnx":
        from onnx import numpy_helper

        arrays = [
            numpy_helper.to_array(t)
            for t in handle.model.graph.initializer
            if (wanted is None or t.name in wanted) and t.data_type in (1, 10, 16)
        ]
        arrays = [a for a in arrays if a.ndim >= 2]
        zeros = sum(int((a == 0).sum()) for a in arrays)
        return zeros / max(sum(a.size for a in arrays), 1)
    targets = _weight_targets(handle.model, None, None)
    tensors = [t for n, _, _, t in targets if wanted is None or n in wanted]
    zeros = sum(int((t == 0).sum()) for t in tensors)
    return zeros / max(sum(t.numel() for t in tensors), 1)
