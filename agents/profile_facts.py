"""The few facts the planners read from a model profile (`tools.inspect_model`'s ModelProfile, dumped).

Kept in one place so the planners do not depend on the profile's exact layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProfileFacts:
    total_params: int = 0
    linear_fraction: float = 0.0
    conv_fraction: float = 0.0
    quantizable: list[str] = field(default_factory=list)  # layer names in model order
    prunable: list[str] = field(default_factory=list)
    layer_params: dict[str, int] = field(default_factory=dict)
    blocks: list[str] = field(default_factory=list)  # top-level block names
    size_bytes: int = 0
    runtime: str = ""
    format: str = ""
    has_inputs: bool = False  # an input signature is known (calibration and evaluation can synthesize data)
    # Bytes of float weight matrices (2-D or more) by the op (ONNX) or module type (torch) that reads them:
    # what each quantization method can shrink.
    weight_bytes: dict[str, int] = field(default_factory=dict)
    float_bytes: int = 0  # bytes of every float tensor (what fp16 halves)
    # ONNX MatMul weights by input width (K): MatMulNBits needs K of at least a block.
    matmul_widths: list[int] = field(default_factory=list)

    def bytes_of(self, *kinds: str) -> int:
        return sum(v for k, v in self.weight_bytes.items() if k in kinds)


def _names(items: Any) -> list[str]:
    out: list[str] = []
    for item in items or []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            name = item.get("name") or item.get("qualified_name")
            if name:
                out.append(str(name))
    return out


def _counts(value: Any) -> dict[str, int]:
    """{type or block: parameter count} from either a mapping of numbers or of small dicts."""
    out: dict[str, int] = {}
    if isinstance(value, dict):
        for key, v in value.items():
            if isinstance(v, (int, float)):
                out[str(key)] = int(v)
            elif isinstance(v, dict):
                n = v.get("params", v.get("parameters", v.get("count", 0)))
                out[str(key)] = int(n or 0)
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, dict):
                key = v.get("name") or v.get("type") or v.get("layer_type") or v.get("block")
                n = v.get("params", v.get("parameters", v.get("count", 0)))
                if key is not None:
                    out[str(key)] = int(n or 0)
    return out


def profile_facts(profile: dict[str, Any]) -> ProfileFacts:
    total = int(profile.get("total_parameters") or 0)
    by_type: dict[str, int] = {}
    for key in ("parameters_by_layer_type", "params_per_layer_type", "params_by_layer_type"):
        if key in profile:
            by_type = _counts(profile[key])
            break
    by_block: dict[str, int] = {}
    for key in ("parameters_by_block", "params_per_block", "params_by_block"):
        if key in profile:
            by_block = _counts(profile[key])
            break
    if not total:
        total = sum(by_type.values()) or sum(by_block.values())

    def frac(kinds: tuple[str, ...]) -> float:
        n = sum(v for k, v in by_type.items() if any(s in k for s in kinds))
        return n / total if total else 0.0

    layer_params: dict[str, int] = {}
    for item in profile.get("layers") or []:
        if isinstance(item, dict) and item.get("name"):
            layer_params[str(item["name"])] = int(item.get("parameters") or 0)
    for key in ("quantizable_layers", "prunable_layers"):
        for item in profile.get(key) or []:
            if isinstance(item, dict) and (item.get("name") or item.get("qualified_name")):
                n = item.get("params", item.get("parameters", 0)) or 0
                layer_params[str(item.get("name") or item.get("qualified_name"))] = int(n)
    weight_bytes: dict[str, int] = {}
    float_bytes = 0
    widths: list[int] = []
    for item in profile.get("layers") or []:
        if not isinstance(item, dict):
            continue
        dtype = str(item.get("dtype") or "")
        nbytes = int(item.get("bytes") or 0)
        if not dtype.startswith(("float", "bfloat")):
            continue
        float_bytes += nbytes
        shape = [int(d) for d in item.get("shape") or []]
        if len(shape) >= 2:
            kind = str(item.get("type") or "")
            weight_bytes[kind] = weight_bytes.get(kind, 0) + nbytes
            if kind == "MatMul":
                widths.append(shape[-2] if len(shape) >= 2 else shape[0])
    return ProfileFacts(
        runtime=str(profile.get("runtime") or ""),
        format=str(profile.get("format") or ""),
        has_inputs=bool(profile.get("inputs")),
        weight_bytes=weight_bytes,
        float_bytes=float_bytes,
        matmul_widths=widths,
        total_params=total,
        linear_fraction=frac(("Linear", "MatMul", "Gemm")),
        conv_fraction=frac(("Conv",)),
        quantizable=_names(profile.get("quantizable_layers")),
        prunable=_names(profile.get("prunable_layers")),
        layer_params=layer_params,
        blocks=list(by_block),
        size_bytes=int(profile.get("size_bytes") or 0),
    )


def module_names(profile: dict[str, Any]) -> list[str]:
    facts = profile_facts(profile)
    return sorted(set(facts.quantizable) | set(facts.prunable) | set(facts.blocks))
