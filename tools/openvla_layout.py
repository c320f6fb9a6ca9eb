"""OpenVLA's Hugging Face checkpoint layout, mapped onto the `vla` architecture without running its code.

OpenVLA ships as `config.json` (`model_type: "openvla"`, an `auto_map` naming its own
`modeling_prismatic.py`) plus safetensors shards. Its model, as openvla/openvla's
`prismatic/extern/hf/modeling_prismatic.py` and `vla-scripts/extern/convert_openvla_weights_to_hf.py`
define it:

- `vision_backbone.featurizer.*`: timm's `vit_large_patch14_reg4_dinov2` (class token, 4 register
  tokens, position embeddings on the patches only, LayerScale renamed `ls*.scale_factor`);
  `vision_backbone.fused_featurizer.*`: timm's `vit_so400m_patch14_siglip_224` (no class token, an
  attention-pool head). Both run as `get_intermediate_layers(n={depth - 2})`: the patch tokens after
  the second-to-last block, without the final norm. Attention is one fused `attn.qkv`.
- `projector.fc1/fc2/fc3`: fused width -> 4x -> LLM width -> LLM width, GELU between.
- `language_model.*`: a transformers `LlamaForCausalLM` from `text_config` (fields left out take
  the defaults of the `LlamaConfig` OpenVLA was converted with, transformers 4.40.1); the image
  tokens go after the first (BOS) token; actions are 7 greedy tokens over the whole vocabulary;
  the 256 action tokens are the last ids of the tokenizer's vocabulary (the embedding table has
  `pad_to_multiple_of` padding rows above them), bin 0 the highest id.

The mapping onto `vla`: the same modules with q/k/v split out of `qkv` (rows in q, k, v order, as
timm's reshape reads them), featurizers built with `depth - 1` blocks and no final norm, and the
layout switches `pos_embed_prefix`, `text_before_image`, `action_token_end`,
`action_tokens_descending` and `greedy_over`. The weights that never reach the output (each
featurizer's last block and final norm, SigLIP's attention-pool head) are skipped on load; any other
key that the layout does not know, and any key it needs but does not find, is refused.

Loading builds the module on the meta device and assigns the memory-mapped safetensors tensors into
it, so the weights exist once (no second copy), on the requested device.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from tools.architectures import VLAConfig, build_model, canonical_ref, resolve, rope_tables
from tools.errors import InvalidModelError, UnsupportedFormatError
from tools.handle import ArchitectureRef

MODEL_TYPE = "openvla"
ARCHITECTURE_CLASS = "OpenVLAForActionPrediction"
DEFAULT_INSTRUCTION_LEN = 32

# Vision backbones whose layout maps exactly: (DINOv2 timm id, SigLIP timm id, image size).
_VISION_BACKBONES: dict[str, tuple[str, str, int]] = {
    "dinosiglip-vit-so-224px": (
        "vit_large_patch14_reg4_dinov2.lvd142m",
        "vit_so400m_patch14_siglip_224",
        224,
    ),
}
# timm's definitions of the two featurizers (vision_transformer.py, timm 0.9.10 - 0.9.16).
_TIMM_VITS: dict[str, dict[str, Any]] = {
    "vit_large_patch14_reg4_dinov2.lvd142m": {
        "patch_size": 14,
        "width": 1024,
        "depth": 24,
        "heads": 16,
        "mlp_dim": 4096,
        "num_registers": 4,
        "class_token": True,
        "layer_scale": True,
        "pos_embed_prefix": False,  # no_embed_class=True
    },
    "vit_so400m_patch14_siglip_224": {
        "patch_size": 14,
        "width": 1152,
        "depth": 27,
        "heads": 16,
        "mlp_dim": 4304,  # int(1152 * 3.7362)
        "num_registers": 0,
        "class_token": False,
        "layer_scale": False,
        "pos_embed_prefix": True,
    },
}
# LLM backbones whose transformers class is Llama (configuration_prismatic.LLM_BACKBONE_TO_HF_METACLASS).
_LLAMA_BACKBONES = {
    "llama2-7b-pure",
    "llama2-13b-pure",
    "llama2-7b-chat",
    "llama2-13b-chat",
    "vicuna-v15-7b",
    "vicuna-v15-13b",
}
# transformers 4.40.1 LlamaConfig defaults: OpenVLA's text_config stores only what differs from them.
_LLAMA_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": None,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
}

_DINO = "vision_backbone.featurizer."
_SIGLIP = "vision_backbone.fused_featurizer."
_LLM = "language_model."
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_QKV = ("q_proj", "k_proj", "v_proj")
_VIT_BLOCK_KEYS = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attn.proj.weight": "attn.o_proj.weight",
    "attn.proj.bias": "attn.o_proj.bias",
    "mlp.fc1.weight": "fc1.weight",
    "mlp.fc1.bias": "fc1.bias",
    "mlp.fc2.weight": "fc2.weight",
    "mlp.fc2.bias": "fc2.bias",
    "ls1.scale_factor": "ls1",
    "ls2.scale_factor": "ls2",
}
_VIT_TOP_KEYS = {
    "cls_token": "cls_token",
    "reg_token": "register_tokens",
    "pos_embed": "pos_embed",
    "patch_embed.proj.weight": "patch_embed.weight",
    "patch_embed.proj.bias": "patch_embed.bias",
}
_LLM_LAYER_KEYS = {
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
}


def is_openvla_config(config: Any) -> bool:
    """Whether a parsed `config.json` is OpenVLA's (its `auto_map` code is then never needed)."""
    if not isinstance(config, Mapping):
        return False
    architectures = config.get("architectures")
    return config.get("model_type") == MODEL_TYPE or (
        isinstance(architectures, list) and ARCHITECTURE_CLASS in architectures
    )


def openvla_architecture_ref(
    config: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    instruction_len: int = DEFAULT_INSTRUCTION_LEN,
) -> ArchitectureRef:
    """The `vla` reference equal to an OpenVLA checkpoint's model.

    The language model comes from `text_config`; the featurizers from the timm models the config
    names, at the widths, depths and patch sizes the weights have when `shapes` (checkpoint key ->
    shape, from the safetensors headers) is given. Raises `UnsupportedFormatError` for OpenVLA
    variants this layout does not map exactly, `InvalidModelError` for a config that contradicts itself.
    """
    if not is_openvla_config(config):
        raise InvalidModelError("not an OpenVLA config (model_type is not 'openvla')")
    backbone = config.get("vision_backbone_id", "dinosiglip-vit-so-224px")
    if backbone not in _VISION_BACKBONES:
        raise UnsupportedFormatError(
            f"OpenVLA vision backbone '{backbone}' is not supported",
            details=f"supported: {sorted(_VISION_BACKBONES)} (a fused DINOv2 + SigLIP featurizer)",
        )
    dino_id, siglip_id, default_size = _VISION_BACKBONES[backbone]
    if config.get("use_fused_vision_backbone") is False:
        raise UnsupportedFormatError(
            f"'{backbone}' without use_fused_vision_backbone is not an OpenVLA layout"
        )
    timm_ids = config.get("timm_model_ids")
    if timm_ids is not None and list(timm_ids) != [dino_id, siglip_id]:
        raise UnsupportedFormatError(
            f"OpenVLA featurizers {timm_ids} differ from [{dino_id!r}, {siglip_id!r}]"
        )
    acts = config.get("timm_override_act_layers")
    if acts is not None and any(a is not None for a in acts):
        raise UnsupportedFormatError(f"OpenVLA featurizer activation overrides {acts} are not supported")
    sizes = config.get("image_sizes") or [default_size, default_size]
    if len(sizes) != 2 or len(set(sizes)) != 1 or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise InvalidModelError(f"OpenVLA image_sizes must be two equal sizes, got {sizes}")

    dino = _vit_config(_TIMM_VITS[dino_id], _DINO, shapes, image_size=sizes[0])
    siglip = _vit_config(_TIMM_VITS[siglip_id], _SIGLIP, shapes, image_size=sizes[1])
    text = _llama_config(config)
    vocab = int(text["vocab_size"])
    pad_to = int(config.get("pad_to_multiple_of", 64))
    bins = int(config.get("n_action_bins", 256))
    vla: dict[str, Any] = {
        "dino": dino,
        "siglip": siglip,
        # PrismaticProjector (fused): fc1 is 4x the fused featurizer width.
        "projector_hidden": 4 * (dino["width"] + siglip["width"]),
        "llm_dim": int(text["hidden_size"]),
        "llm_layers": int(text["num_hidden_layers"]),
        "llm_heads": int(text["num_attention_heads"]),
        "llm_ffn": int(text["intermediate_size"]),
        "vocab_size": vocab,
        "rope_theta": float(text["rope_theta"]),
        "norm_eps": float(text["rms_norm_eps"]),
        "instruction_len": instruction_len,
        "action_dims": _action_dims(config.get("norm_stats")),
        "action_bins": bins,
        "decoding": "autoregressive",
        "text_before_image": 1,
        "action_token_end": vocab - pad_to,
        "action_tokens_descending": True,
        "greedy_over": "vocabulary",
    }
    try:
        return canonical_ref(ArchitectureRef(name="vla", config=vla))
    except Exception as exc:  # an InvalidArgumentError from the config's validation
        raise InvalidModelError(f"OpenVLA config does not describe a valid model: {exc}") from exc


def remap_openvla_state_dict(
    state: Mapping[str, torch.Tensor], ref: ArchitectureRef | Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """OpenVLA checkpoint keys -> the `vla` module's keys (q/k/v views of `qkv`, no copy).

    `state` may be lazy (only the keys read are materialised). Unused weights are skipped; keys the
    layout does not know and keys the module needs but the checkpoint lacks raise `InvalidModelError`.
    """
    ref = ArchitectureRef.model_validate(ref) if not isinstance(ref, ArchitectureRef) else ref
    _, cfg = resolve(ref)
    plan = _key_plan(list(state.keys()), cfg)
    out: dict[str, torch.Tensor] = {}
    for ours, (theirs, part) in plan.items():
        tensor = state[theirs]
        if part is not None:
            if tensor.shape[0] % 3:
                raise InvalidModelError(f"'{theirs}' has {tensor.shape[0]} rows, not three equal q/k/v parts")
            tensor = tensor.chunk(3, dim=0)[part]
        out[ours] = tensor
    expected = set(build_model(ref, device="meta").state_dict())
    missing = sorted(expected - set(out))
    if missing:
        raise InvalidModelError(
            f"OpenVLA checkpoint lacks {len(missing)} weight(s) the model needs, "
            f"e.g. {_their_names(missing[:3])}"
        )
    return out


def load_openvla_directory(
    directory: Path, config: Mapping[str, Any], device: str = "cpu"
) -> tuple[torch.nn.Module, ArchitectureRef]:
    """Build the `vla` module of an OpenVLA checkpoint directory, weights memory-mapped onto `device`.

    Nothing in the directory is executed. The module keeps the checkpoint's dtype (bf16 for OpenVLA-7B).
    """
    files = _safetensors_files(Path(directory))
    with ExitStack() as stack:
        handles = {
            f: stack.enter_context(safe_open(str(f), framework="pt", device=str(device))) for f in files
        }
        owner: dict[str, Any] = {}
        for handle in handles.values():
            for key in handle.keys():
                if key in owner:
                    raise InvalidModelError(f"weight '{key}' is stored in more than one shard")
                owner[key] = handle
        shapes = {k: tuple(h.get_slice(k).get_shape()) for k, h in owner.items()}
        ref = openvla_architecture_ref(config, shapes)
        state = remap_openvla_state_dict(_LazyTensors(owner), ref)
        model = build_model(ref, device="meta")
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise InvalidModelError(
                "OpenVLA weights do not fit the model its config describes", details=str(exc)[:2000]
            ) from exc
    _, cfg = resolve(ref)
    model.rope_cos, model.rope_sin = rope_tables(cfg, device=device)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise InvalidModelError(f"OpenVLA checkpoint left {left[:3]} unset")
    return model.eval(), ref


# --------------------------------------------------------------------------------------------


class _LazyTensors(Mapping[str, torch.Tensor]):
    """Checkpoint key -> tensor, read from its shard only when asked for."""

    def __init__(self, owner: Mapping[str, Any]) -> None:
        self._owner = owner

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._owner[key].get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner)

    def __len__(self) -> int:
        return len(self._owner)


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidModelError(f"unreadable {index.name}: {exc}") from exc
        for n in names:
            if (
                not isinstance(n, str)
                or Path(n).name != n
                or n in ("", ".", "..")
                or not (directory / n).is_file()
            ):
                raise InvalidModelError(
                    f"{index.name} names a shard {n!r} that is not a file of the directory"
                )
        return [directory / n for n in names]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise InvalidModelError(
        "OpenVLA directory has neither model.safetensors nor model.safetensors.index.json"
    )


def _vit_config(
    base: dict[str, Any], prefix: str, shapes: Mapping[str, tuple[int, ...]] | None, *, image_size: int
) -> dict[str, Any]:
    vit = dict(base)
    if shapes is not None:
        patch = shapes.get(f"{prefix}patch_embed.proj.weight")
        fc1 = shapes.get(f"{prefix}blocks.0.mlp.fc1.weight")
        if patch is None or len(patch) != 4 or fc1 is None or len(fc1) != 2:
            raise InvalidModelError(
                f"OpenVLA checkpoint lacks '{prefix}patch_embed.proj.weight' or its blocks"
            )
        depth = 1 + max(
            (
                int(m.group(1))
                for k in shapes
                if k.startswith(prefix) and (m := _BLOCK.match(k[len(prefix) :]))
            ),
            default=-1,
        )
        registers = shapes.get(f"{prefix}reg_token")
        vit.update(
            width=int(patch[0]),
            patch_size=int(patch[-1]),
            depth=depth,
            mlp_dim=int(fc1[0]),
            num_registers=int(registers[1]) if registers is not None and len(registers) == 3 else 0,
            class_token=f"{prefix}cls_token" in shapes,
            layer_scale=f"{prefix}blocks.0.ls1.scale_factor" in shapes,
        )
    if vit["depth"] < 2:
        raise InvalidModelError(
            f"OpenVLA featurizer '{prefix[:-1]}' needs at least 2 blocks (it reads depth - 2)"
        )
    # OpenVLA reads the output of block depth - 2, before the final norm: the last block never runs.
    vit["depth"] -= 1
    vit["final_norm"] = False
    vit["image_size"] = image_size
    return vit


def _llama_config(config: Mapping[str, Any]) -> dict[str, Any]:
    backbone = config.get("llm_backbone_id", "llama2-7b-pure")
    if backbone not in _LLAMA_BACKBONES:
        raise UnsupportedFormatError(
            f"OpenVLA language model '{backbone}' is not supported",
            details=f"supported (Llama-architecture) backbones: {sorted(_LLAMA_BACKBONES)}",
        )
    raw = config.get("text_config") or {}
    if not isinstance(raw, Mapping):
        raise InvalidModelError("OpenVLA text_config must be an object")
    if raw.get("model_type", "llama") != "llama":
        raise UnsupportedFormatError(f"OpenVLA text_config model_type '{raw.get('model_type')}' is not llama")
    text = {**_LLAMA_DEFAULTS, **{k: v for k, v in raw.items() if k in _LLAMA_DEFAULTS or k == "head_dim"}}
    rope = raw.get("rope_parameters")  # transformers 5 keeps rope_theta there
    if isinstance(rope, Mapping):
        if rope.get("rope_type", "default") != "default":
            raise UnsupportedFormatError(f"OpenVLA rotary scaling {dict(rope)} is not supported")
        text["rope_theta"] = rope.get("rope_theta", text["rope_theta"])
    heads = int(text["num_attention_heads"])
    refusals = {
        "grouped-query attention (num_key_value_heads != num_attention_heads)": text["num_key_value_heads"]
        not in (None, heads),
        "rope_scaling": text["rope_scaling"] is not None,
        "attention_bias": bool(text["attention_bias"]),
        "mlp_bias": bool(text["mlp_bias"]),
        "tied word embeddings": bool(text["tie_word_embeddings"]),
        f"hidden_act '{text['hidden_act']}'": text["hidden_act"] != "silu",
        "head_dim other than hidden_size / num_attention_heads": text.get("head_dim")
        not in (
            None,
            int(text["hidden_size"]) // max(heads, 1),
        ),
    }
    refused = [what for what, hit in refusals.items() if hit]
    if refused:
        raise UnsupportedFormatError(f"OpenVLA language model with {', '.join(refused)} is not supported")
    return text


def _action_dims(norm_stats: Any) -> int:
    """Action dimensions from the normalisation statistics (7 for every published OpenVLA)."""
    if not isinstance(norm_stats, Mapping) or not norm_stats:
        return 7
    dims = set()
    for stats in norm_stats.values():
        try:
            dims.add(len(stats["action"]["q01"]))
        except (KeyError, TypeError) as exc:
            raise InvalidModelError("OpenVLA norm_stats entries need action.q01") from exc
    if len(dims) != 1:
        raise UnsupportedFormatError(f"OpenVLA norm_stats mix action sizes {sorted(dims)}")
    return dims.pop()


def _key_plan(names: list[str], cfg: VLAConfig) -> dict[str, tuple[str, int | None]]:
    """Our key -> (checkpoint key, q/k/v part or None); raises on keys the layout does not know."""
    plan: dict[str, tuple[str, int | None]] = {}
    unknown: list[str] = []
    for name in names:
        target = _map_key(name, cfg)
        if target is None:
            unknown.append(name)
            continue
        for ours, part in target:
            plan[ours] = (name, part)
    if unknown:
        raise InvalidModelError(
            f"OpenVLA checkpoint has {len(unknown)} weight(s) outside its layout, e.g. {unknown[:3]}"
        )
    return plan


def _map_key(name: str, cfg: VLAConfig) -> list[tuple[str, int | None]] | None:
    """Targets of one checkpoint key: [] for a weight that never reaches the output, None if unknown."""
    for prefix, ours, vit in ((_DINO, "vision_dino.", cfg.dino), (_SIGLIP, "vision_siglip.", cfg.siglip)):
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        if rest in _VIT_TOP_KEYS:
            return [(ours + _VIT_TOP_KEYS[rest], None)]
        if rest in ("norm.weight", "norm.bias") or rest.startswith(("attn_pool.", "head.", "fc_norm.")):
            return []
        m = _BLOCK.fullmatch(rest)
        if m is None:
            return None
        index, sub = int(m.group(1)), m.group(2)
        if index == vit.depth:  # the featurizer's last block: OpenVLA stops before it
            return []
        if index > vit.depth:
            return None
        block = f"{ours}blocks.{index}."
        if sub in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = sub.rsplit(".", 1)[1]
            return [(f"{block}attn.{proj}.{kind}", part) for part, proj in enumerate(_QKV)]
        if sub in _VIT_BLOCK_KEYS:
            return [(block + _VIT_BLOCK_KEYS[sub], None)]
        return None
    if name.startswith("projector.") and name[len("projector.") :] in {
        f"fc{i}.{k}" for i in (1, 2, 3) for k in ("weight", "bias")
    }:
        return [(name, None)]
    if name.startswith(_LLM):
        rest = name[len(_LLM) :]
        if rest == "model.embed_tokens.weight":
            return [("embed_tokens.weight", None)]
        if rest == "model.norm.weight":
            return [("norm.weight", None)]
        if rest == "lm_head.weight":
            return [("lm_head.weight", None)]
        m = _LAYER.fullmatch(rest)
        if m is not None:
            if m.group(2) == "self_attn.rotary_emb.inv_freq":  # older transformers saved it; derived
                return []
            if m.group(2) in _LLM_LAYER_KEYS and int(m.group(1)) < cfg.llm_layers:
                return [(f"layers.{m.group(1)}.{m.group(2)}", None)]
    return None


def _their_names(ours: list[str]) -> list[str]:
    """Our key names as the checkpoint would spell them, for error messages."""
    out = []
    for key in ours:
        key = key.replace("vision_dino.", _DINO).replace("vision_siglip.", _SIGLIP)
        if key.startswith(("embed_tokens.", "layers.", "norm.")):
            key = f"{_LLM}model.{key}"
        elif key.startswith("lm_head."):
            key = _LLM + key
        out.append(key)
    return out
