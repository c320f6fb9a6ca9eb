"""Mixed precision of torch modules, chosen by measured sensitivity (`tools.sensitivity`).

`quantize(handle, method, accuracy_target=...)` or `quantize(handle, method, size_target=...)` on a torch
model (an eager module, a `.pt2` program, TorchScript) comes here; ONNX graphs have their own builder in
`tools.onnx_quantization`. Candidates are built with the post-training path itself (`quantize` with the
layers of each precision named in `include`), so every layer runs the kernel that method gives it:

- dynamic_int8 / weight_only_int8: each layer int8 or float;
- weight_only_int4 (torchao int4, CUDA only): each layer 4-bit, int8 weight-only or float.

`size_target` (a fraction of the current size) measures each layer group alone at each precision and
solves a knapsack for the least summed cost that fits (`choose_for_size`); `accuracy_target` keeps the
costliest groups at the higher precision until the target is retained (`choose_mixed`). Both compare
against the model being quantized, on its evaluation data or synthesized inputs. The result is one
recipe step (the method, the target, and in `result["mixed_precision"]` every precision chosen and the
measurements behind it), which replays to the same model: the measurements are deterministic.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tools.errors import InvalidArgumentError
from tools.handle import ModelHandle
from tools.sensitivity import Layer, Probe, choose_for_size, choose_mixed, group_layers

# The lower precisions each method offers per layer, and the method that builds each precision.
PRECISIONS: dict[str, tuple[str, ...]] = {
    "dynamic_int8": ("int8",),
    "weight_only_int8": ("int8",),
    "weight_only_int4": ("int8", "int4"),
}


def quantize_mixed(
    handle: ModelHandle,
    method: str,
    *,
    include: list[str] | None,
    exclude: list[str] | None,
    layer_types: list[str] | None,
    seed: int,
    backend: str,
    accuracy_target: float | None,
    size_target: float | None,
    step: dict[str, Any],
) -> ModelHandle:
    """The torch model with per-layer precisions chosen for `size_target` or `accuracy_target`."""
    from tools.evaluation import evaluate
    from tools.exporting import serialized_size
    from tools.quantization import quantize

    if method not in PRECISIONS:
        raise InvalidArgumentError(
            f"mixed precision (accuracy_target / size_target) on a torch model applies to "
            f"{', '.join(PRECISIONS)}; {method} quantizes every selected layer the same way"
        )
    common: dict[str, Any] = {"layer_types": layer_types, "seed": seed, "backend": backend}
    full = quantize(handle, method, include=include, exclude=exclude, **common)
    names = list(full.recipe[-1]["result"].get("layers") or [])
    if not names:
        raise InvalidArgumentError(f"{method} quantized no layer of this model: nothing to mix")
    lowest = PRECISIONS[method][-1]
    by_precision = {"int8": "weight_only_int8" if method == "weight_only_int4" else method, "int4": method}
    reference = handle.clone(model=handle.model)  # its own cache: the float outputs, computed once
    built: dict[tuple[tuple[str, str], ...], ModelHandle] = {}

    def build(assign: dict[str, str]) -> ModelHandle:
        key = tuple(sorted(assign.items()))
        if key in built:
            return built[key]
        if all(assign.get(n) == lowest for n in names):
            out = full
        elif not assign:
            out = handle
        else:
            out = handle
            for precision in PRECISIONS[method][::-1]:
                chosen = [n for n, p in assign.items() if p == precision]
                if chosen:
                    out = quantize(out, by_precision[precision], include=chosen, **common)
        built[key] = out
        return out

    def probe(candidate: ModelHandle) -> Probe:
        r = evaluate(candidate, reference=reference)
        return Probe(float(r.accuracy_retained), float(r.relative_error))

    layers = [Layer(n, n, _weight_bytes(handle, n)) for n in names]
    groups = group_layers(layers)
    result: dict[str, Any]
    if size_target is not None:
        target_bytes = int(size_target * serialized_size(handle))
        chosen_handle, choice = choose_for_size(
            groups, PRECISIONS[method], build, probe, serialized_size, target_bytes
        )
        result = {"mixed_precision": choice.summary()}
        kept = [n for n, p in choice.layers.items() if p == "float"]
        layer_precisions = choice.layers
    else:
        assert accuracy_target is not None
        high = PRECISIONS[method][0] if method == "weight_only_int4" else "float"

        def build_high(keep: set[str]) -> ModelHandle:
            return build(
                {n: (high if n in keep else lowest) for n in names if not (n in keep and high == "float")}
            )

        chosen_handle, mixed = choose_mixed(
            groups, build_high, probe, accuracy_target, all_high_is_useful=high != "float"
        )
        result = {"mixed_precision": mixed.summary()}
        layer_precisions = {n: (high if n in mixed.high else lowest) for n in names}
        kept = [n for n, p in layer_precisions.items() if p == "float"]
    inner = chosen_handle.recipe[len(handle.recipe) :]
    backends = sorted({str(s.get("result", {}).get("backend")) for s in inner if s.get("result")})
    result.update(
        backend="+".join(backends) if backends else "none",
        layers=[n for n, p in layer_precisions.items() if p != "float"],
        layer_precisions=layer_precisions,
        kept_float=sorted(set(full.recipe[-1]["result"].get("kept_float") or []) | set(kept)),
        built_with=[{k: s.get(k) for k in ("method", "include")} for s in inner],
    )
    step["result"] = {**step.get("result", {}), **result}
    device = chosen_handle.device
    return dataclasses.replace(
        chosen_handle,
        recipe=[*handle.recipe, step],
        metadata=dict(handle.metadata),
        cache={},
        device=device,
    )


def _weight_bytes(handle: ModelHandle, name: str) -> int:
    """The float bytes of a layer's weight (what quantizing it can save), 1 when it cannot be read."""
    try:
        weight = handle.model.get_submodule(name).weight
        return int(weight.numel() * weight.element_size())
    except (AttributeError, TypeError):
        return 1
