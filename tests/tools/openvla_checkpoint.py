"""A synthetic OpenVLA checkpoint at a small width, and OpenVLA's forward written from its sources.

`write_openvla_checkpoint` writes what openvla/openvla's `convert_openvla_weights_to_hf.py` writes
(`config.json` in `OpenVLAConfig`'s shape with its `auto_map`, sharded safetensors with the
`vision_backbone.featurizer.*` / `vision_backbone.fused_featurizer.*` / `projector.*` /
`language_model.*` keys and shapes, plus a `modeling_prismatic.py` that must never run), with random
weights. `reference_actions` runs the model as `modeling_prismatic.py` does: timm's ViT
(`get_intermediate_layers(n={depth - 2})`, fused qkv, `no_embed_class`), the fused projector, and a
transformers `LlamaForCausalLM` with the image tokens after BOS, then greedy generation over the
whole vocabulary. It shares no code with `tools.architectures`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

RAN_MARKER = "remote_code_ran"


@dataclass(frozen=True)
class Sizes:
    dino_width: int = 32  # 16 heads as in timm's ViT-L: head size 2
    siglip_width: int = 48
    dino_mlp: int = 64
    siglip_mlp: int = 80
    depth: int = 3  # OpenVLA reads block depth - 2: two blocks run, the third never does
    image_size: int = 28  # 2 x 2 patches of 14 px
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int = 96
    vocab: int = 32064  # OpenVLA's: 32000 tokenizer ids + 64 padding rows


def openvla_config(s: Sizes = Sizes()) -> dict[str, Any]:
    """`config.json` as OpenVLAConfig.save_pretrained writes it (text_config only where it differs)."""
    return {
        "arch_specifier": "no-align+fused-gelu-mlp",
        "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {
            "AutoConfig": "configuration_prismatic.OpenVLAConfig",
            "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
        },
        "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "image_resize_strategy": "resize-naive",
        "image_sizes": [s.image_size, s.image_size],
        "llm_backbone_id": "llama2-7b-pure",
        "llm_max_length": 2048,
        "model_type": "openvla",
        "n_action_bins": 256,
        "norm_stats": {
            "bridge_orig": {
                "action": {
                    "q01": [-0.03, -0.04, -0.03, -0.1, -0.1, -0.2, 0.0],
                    "q99": [0.03, 0.04, 0.04, 0.1, 0.1, 0.2, 1.0],
                    "mask": [True] * 6 + [False],
                }
            }
        },
        "output_projector_states": False,
        "pad_to_multiple_of": 64,
        "pad_token_id": 32000,
        "text_config": {
            "model_type": "llama",
            "hidden_size": s.hidden,
            "intermediate_size": s.ffn,
            "num_hidden_layers": s.layers,
            "num_attention_heads": s.heads,
            "pad_token_id": 32000,
            "torch_dtype": "bfloat16",
            "vocab_size": s.vocab,
        },
        "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        "timm_override_act_layers": [None, None],
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1",
        "use_fused_vision_backbone": True,
        "vision_backbone_id": "dinosiglip-vit-so-224px",
    }


def _vit_shapes(prefix: str, width: int, mlp: int, depth: int, patches: int, *, dino: bool) -> dict:
    shapes: dict[str, tuple[int, ...]] = {
        f"{prefix}patch_embed.proj.weight": (width, 3, 14, 14),
        f"{prefix}patch_embed.proj.bias": (width,),
        f"{prefix}pos_embed": (1, patches, width),
        f"{prefix}norm.weight": (width,),
        f"{prefix}norm.bias": (width,),
    }
    if dino:
        shapes[f"{prefix}cls_token"] = (1, 1, width)
        shapes[f"{prefix}reg_token"] = (1, 4, width)
    for i in range(depth):
        b = f"{prefix}blocks.{i}."
        shapes |= {
            b + "norm1.weight": (width,),
            b + "norm1.bias": (width,),
            b + "attn.qkv.weight": (3 * width, width),
            b + "attn.qkv.bias": (3 * width,),
            b + "attn.proj.weight": (width, width),
            b + "attn.proj.bias": (width,),
            b + "norm2.weight": (width,),
            b + "norm2.bias": (width,),
            b + "mlp.fc1.weight": (mlp, width),
            b + "mlp.fc1.bias": (mlp,),
            b + "mlp.fc2.weight": (width, mlp),
            b + "mlp.fc2.bias": (width,),
        }
        if dino:
            shapes[b + "ls1.scale_factor"] = (width,)
            shapes[b + "ls2.scale_factor"] = (width,)
    if not dino:  # timm's AttentionPoolLatent head ('map' pooling), unused by get_intermediate_layers
        a = f"{prefix}attn_pool."
        shapes |= {
            a + "latent": (1, 1, width),
            a + "q.weight": (width, width),
            a + "q.bias": (width,),
            a + "kv.weight": (2 * width, width),
            a + "kv.bias": (2 * width,),
            a + "proj.weight": (width, width),
            a + "proj.bias": (width,),
            a + "norm.weight": (width,),
            a + "norm.bias": (width,),
            a + "mlp.fc1.weight": (mlp, width),
            a + "mlp.fc1.bias": (mlp,),
            a + "mlp.fc2.weight": (width, mlp),
            a + "mlp.fc2.bias": (width,),
        }
    return shapes


def checkpoint_shapes(s: Sizes = Sizes()) -> dict[str, tuple[int, ...]]:
    patches = (s.image_size // 14) ** 2
    fused = s.dino_width + s.siglip_width
    shapes = _vit_shapes("vision_backbone.featurizer.", s.dino_width, s.dino_mlp, s.depth, patches, dino=True)
    shapes |= _vit_shapes(
        "vision_backbone.fused_featurizer.", s.siglip_width, s.siglip_mlp, s.depth, patches, dino=False
    )
    shapes |= {
        "projector.fc1.weight": (4 * fused, fused),
        "projector.fc1.bias": (4 * fused,),
        "projector.fc2.weight": (s.hidden, 4 * fused),
        "projector.fc2.bias": (s.hidden,),
        "projector.fc3.weight": (s.hidden, s.hidden),
        "projector.fc3.bias": (s.hidden,),
        "language_model.model.embed_tokens.weight": (s.vocab, s.hidden),
        "language_model.model.norm.weight": (s.hidden,),
        "language_model.lm_head.weight": (s.vocab, s.hidden),
    }
    for i in range(s.layers):
        b = f"language_model.model.layers.{i}."
        shapes |= {
            b + "self_attn.q_proj.weight": (s.hidden, s.hidden),
            b + "self_attn.k_proj.weight": (s.hidden, s.hidden),
            b + "self_attn.v_proj.weight": (s.hidden, s.hidden),
            b + "self_attn.o_proj.weight": (s.hidden, s.hidden),
            b + "mlp.gate_proj.weight": (s.ffn, s.hidden),
            b + "mlp.up_proj.weight": (s.ffn, s.hidden),
            b + "mlp.down_proj.weight": (s.hidden, s.ffn),
            b + "input_layernorm.weight": (s.hidden,),
            b + "post_attention_layernorm.weight": (s.hidden,),
        }
    return shapes


def random_weights(s: Sizes = Sizes(), *, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in checkpoint_shapes(s).items():
        t = torch.randn(shape, generator=g)
        if key.endswith(("norm.weight", "norm1.weight", "norm2.weight", "layernorm.weight")):
            t = 1.0 + 0.1 * t
        elif "scale_factor" in key:
            t = 0.1 + 0.05 * t
        else:
            t = 0.05 * t if "embed_tokens" in key or "lm_head" in key or "token" in key else 0.08 * t
        out[key] = t
    return out


def write_openvla_checkpoint(
    directory: Path,
    weights: dict[str, torch.Tensor] | None = None,
    *,
    sizes: Sizes = Sizes(),
    config: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Write the checkpoint as two shards with their index; returns the weights written."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.to(dtype).contiguous() for k, v in (weights or random_weights(sizes)).items()}
    (directory / "config.json").write_text(json.dumps(config or openvla_config(sizes), indent=2))
    vision = {k: v for k, v in weights.items() if k.startswith("vision_backbone.")}
    rest = {k: v for k, v in weights.items() if k not in vision}
    names = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    save_file(vision, str(directory / names[0]), metadata={"format": "pt"})
    save_file(rest, str(directory / names[1]), metadata={"format": "pt"})
    index = {
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in weights.values())},
        "weight_map": {k: names[0] if k in vision else names[1] for k in weights},
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    # The auto_map's code: it would leave a marker if anything imported or ran it.
    marker = directory / RAN_MARKER
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (directory / "modeling_prismatic.py").write_text(code)
    (directory / "configuration_prismatic.py").write_text(code)
    return weights


# --------------------------------------------------------------------------------------------
# OpenVLA's forward, from modeling_prismatic.py and timm 0.9.16's vision_transformer.py
# --------------------------------------------------------------------------------------------


def _timm_features(
    w: dict[str, torch.Tensor], prefix: str, images: torch.Tensor, *, heads: int
) -> torch.Tensor:
    """`featurizer.get_intermediate_layers(x, n={len(blocks) - 2})[0]`: patch tokens, no final norm."""
    x = F.conv2d(
        images, w[prefix + "patch_embed.proj.weight"], w[prefix + "patch_embed.proj.bias"], stride=14
    )
    x = x.flatten(2).transpose(1, 2)
    b = x.shape[0]
    prefix_tokens = [w[prefix + n].expand(b, -1, -1) for n in ("cls_token", "reg_token") if prefix + n in w]
    # no_embed_class (DINOv2 reg4); SigLIP has no prefix tokens, so both branches agree there
    x = torch.cat([*prefix_tokens, x + w[prefix + "pos_embed"]], dim=1)
    depth = 1 + max(int(k[len(prefix) :].split(".")[1]) for k in w if k.startswith(prefix + "blocks."))
    width = x.shape[-1]
    for i in range(depth - 1):  # blocks 0 .. depth-2; the output of block depth-2 is taken
        p = f"{prefix}blocks.{i}."
        h = F.layer_norm(x, (width,), w[p + "norm1.weight"], w[p + "norm1.bias"], eps=1e-6)
        n = h.shape[1]
        qkv = F.linear(h, w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, width)
        a = F.linear(a, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        x = x + (a * w[p + "ls1.scale_factor"] if p + "ls1.scale_factor" in w else a)
        h = F.layer_norm(x, (width,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps=1e-6)
        m = F.linear(
            F.gelu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])), *_lin(w, p + "mlp.fc2")
        )
        x = x + (m * w[p + "ls2.scale_factor"] if p + "ls2.scale_factor" in w else m)
    return x[:, sum(t.shape[1] for t in prefix_tokens) :]


def _lin(w: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return w[name + ".weight"], w[name + ".bias"]


def reference_language_model(weights: dict[str, torch.Tensor], config: dict[str, Any]) -> LlamaForCausalLM:
    """`AutoModelForCausalLM.from_config(text_config)` with OpenVLA's language_model.* weights."""
    text = {k: v for k, v in config["text_config"].items() if k not in ("model_type", "torch_dtype")}
    # OpenVLA built CONFIG_MAPPING["llama"](**text_config) under transformers 4.40.1: rms_norm_eps 1e-6.
    llm = LlamaForCausalLM(LlamaConfig(**text, rms_norm_eps=1e-6, attn_implementation="eager"))
    state = {k[len("language_model.") :]: v for k, v in weights.items() if k.startswith("language_model.")}
    llm.load_state_dict(state, strict=True)
    return llm.eval()


@torch.no_grad()
def reference_action_logits(
    weights: dict[str, torch.Tensor],
    config: dict[str, Any],
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    *,
    action_dims: int = 7,
) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenVLA's `generate(max_new_tokens=7)`: per-step logits over the whole vocabulary, tokens chosen."""
    w = {k: v.float() for k, v in weights.items()}
    img, img_fused = torch.split(pixel_values, [3, 3], dim=1)
    patches = torch.cat(
        [
            _timm_features(w, "vision_backbone.featurizer.", img, heads=16),
            _timm_features(w, "vision_backbone.fused_featurizer.", img_fused, heads=16),
        ],
        dim=2,
    )
    h = F.gelu(F.linear(patches, *_lin(w, "projector.fc1")))
    h = F.gelu(F.linear(h, *_lin(w, "projector.fc2")))
    projected = F.linear(h, *_lin(w, "projector.fc3"))
    llm = reference_language_model(w, config)
    emb = llm.get_input_embeddings()(input_ids)
    embeds = torch.cat([emb[:, :1], projected, emb[:, 1:]], dim=1)
    out = llm(inputs_embeds=embeds, use_cache=True)
    steps, tokens = [], []
    for i in range(action_dims):
        logits = out.logits[:, -1:]
        steps.append(logits)
        token = logits.argmax(-1)
        tokens.append(token)
        if i + 1 < action_dims:
            out = llm(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(steps, dim=1), torch.cat(tokens, dim=1)
