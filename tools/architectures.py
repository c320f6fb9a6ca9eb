"""Registered architectures: named builders with pydantic configs, for state dicts and reference models.

A state dict (`.pt`, `.safetensors`) is only weights; the registry says which network they belong
to. Each entry builds a module from a validated config with seeded initialisation, and knows the
module's input signature and the kind of output it produces (which `evaluate` uses to pick a metric).

Architectures:
- `mlp_policy`: an MLP from observations to continuous actions (optionally tanh-bounded).
- `cnn_classifier`: a small CNN for 8x8x1 images (sklearn digits), 10 classes.
- `vla`: a vision-language-action model shaped like OpenVLA: two ViT image encoders ("dino" and
  "siglip" branches) whose patch features are concatenated channel-wise, a fused GELU MLP projector,
  and a Llama-style decoder over [image tokens; instruction tokens]. forward returns logits
  [batch, 7, 256] over the action bins (the last 256 ids of the vocabulary, as in OpenVLA), decoded
  either in parallel (7 learned action query tokens appended, one pass: `decoding="parallel"`,
  the default) or as OpenVLA does, greedily one token at a time over a KV cache
  (`decoding="autoregressive"`, the `openvla_7b` preset).

Presets (`PRESETS`) are named configs of a base architecture: `vla_mini` (about 1.5M parameters,
trains on a CPU in minutes) and `openvla_7b` (the real OpenVLA-7B shape, about 7.5B parameters;
never instantiate it on a CPU: `count_parameters` sizes it on the meta device).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from tools.errors import InvalidArgumentError
from tools.handle import ArchitectureRef, InputSpec

OutputKind = Literal["logits", "regression", "action_tokens"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
}


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="Seed of the weight initialisation.")
    resized: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description=(
            "Layers whose widths differ from the config after structured pruning: module name -> "
            "{in_features, out_features, in_channels, out_channels, num_features, normalized_shape, "
            "embedding_dim, num_heads}. Applied after building, so pruned state dicts load back."
        ),
    )


# --------------------------------------------------------------------------------------------
# MLP policy
# --------------------------------------------------------------------------------------------


class MLPPolicyConfig(_Config):
    obs_dim: int = Field(17, ge=1, description="Observation vector size.")
    act_dim: int = Field(6, ge=1, description="Action vector size.")
    hidden: list[int] = Field(default_factory=lambda: [256, 256], description="Hidden layer widths.")
    activation: Literal["relu", "tanh", "gelu", "silu", "elu"] = "relu"
    tanh_output: bool = Field(False, description="Bound actions to [-1, 1] with a final tanh.")

    @model_validator(mode="after")
    def _positive_widths(self) -> MLPPolicyConfig:
        if any(w < 1 for w in self.hidden):
            raise ValueError("hidden widths must be >= 1")
        return self


class MLPPolicy(nn.Module):
    def __init__(self, cfg: MLPPolicyConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = cfg.obs_dim
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[cfg.activation]()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, cfg.act_dim)
        self.tanh_output = cfg.tanh_output

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(obs))
        return torch.tanh(out) if self.tanh_output else out


def _mlp_inputs(cfg: MLPPolicyConfig) -> list[InputSpec]:
    return [InputSpec(name="obs", shape=[None, cfg.obs_dim], dtype="float32", low=-1.0, high=1.0)]


# --------------------------------------------------------------------------------------------
# CNN classifier (sklearn digits)
# --------------------------------------------------------------------------------------------


class CNNClassifierConfig(_Config):
    in_channels: int = Field(1, ge=1)
    image_size: int = Field(8, ge=4, description="Square input side; must be divisible by 2.")
    num_classes: int = Field(10, ge=2)
    channels: list[int] = Field(default_factory=lambda: [16, 32], description="Conv widths (3x3 convs).")
    hidden: int = Field(64, ge=1, description="Width of the fully connected layer before the logits.")
    batch_norm: bool = False

    @model_validator(mode="after")
    def _check(self) -> CNNClassifierConfig:
        if self.image_size % 2:
            raise ValueError("image_size must be even (one 2x2 max-pool)")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError("channels must be a non-empty list of widths >= 1")
        return self


class CNNClassifier(nn.Module):
    """Conv(3x3)+ReLU blocks, one 2x2 max-pool, then FC -> ReLU -> logits. Inputs scaled to [0, 1]."""

    def __init__(self, cfg: CNNClassifierConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = cfg.in_channels
        for c in cfg.channels:
            layers.append(nn.Conv2d(width, c, kernel_size=3, padding=1))
            if cfg.batch_norm:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.ReLU())
            width = c
        layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = cfg.image_size // 2
        self.fc = nn.Linear(width * side * side, cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.features(image).flatten(1)
        return self.head(F.relu(self.fc(x)))


def _cnn_inputs(cfg: CNNClassifierConfig) -> list[InputSpec]:
    return [
        InputSpec(
            name="image",
            shape=[None, cfg.in_channels, cfg.image_size, cfg.image_size],
            dtype="float32",
            low=0.0,
            high=1.0,
        )
    ]


# --------------------------------------------------------------------------------------------
# VLA: two ViT encoders, fused projector, Llama-style decoder
# --------------------------------------------------------------------------------------------


class ViTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(32, ge=4)
    patch_size: int = Field(8, ge=1)
    width: int = Field(64, ge=1)
    depth: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    mlp_dim: int | None = Field(None, description="MLP hidden width; default 4 x width.")
    num_registers: int = Field(0, ge=0, description="Register tokens (DINOv2 with registers uses 4).")
    class_token: bool = True
    layer_scale: bool = Field(False, description="Per-channel residual scales (DINOv2).")
    in_channels: int = 3
    pos_embed_prefix: bool = Field(
        True,
        description=(
            "Position embeddings cover the class token too; False: the patches only, added before the "
            "class and register tokens are prepended (timm's no_embed_class, as OpenVLA's DINOv2)."
        ),
    )
    final_norm: bool = Field(
        True, description="LayerNorm after the last block; OpenVLA reads its featurizers' blocks without it."
    )

    @model_validator(mode="after")
    def _check(self) -> ViTConfig:
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be divisible by patch_size")
        if self.width % self.heads:
            raise ValueError("width must be divisible by heads")
        return self

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def hidden_mlp(self) -> int:
        return self.mlp_dim or 4 * self.width


class VLAConfig(_Config):
    dino: ViTConfig = Field(default_factory=lambda: ViTConfig(num_registers=4, layer_scale=True))
    siglip: ViTConfig = Field(default_factory=lambda: ViTConfig(width=96, class_token=False))
    projector_hidden: int | None = Field(None, description="Projector hidden width; default 4 x fused width.")
    llm_dim: int = Field(128, ge=1)
    llm_layers: int = Field(2, ge=1)
    llm_heads: int = Field(4, ge=1)
    llm_ffn: int = Field(344, ge=1, description="SwiGLU hidden width.")
    vocab_size: int = Field(512, description="Token vocabulary; the last `action_bins` ids are action bins.")
    instruction_len: int = Field(8, ge=1, description="Instruction token count (fixed, padded).")
    action_dims: int = Field(7, ge=1)
    action_bins: int = Field(256, ge=2)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    decoding: Literal["parallel", "autoregressive"] = Field(
        "parallel",
        description=(
            "parallel: 7 learned action queries, all action tokens in one pass; autoregressive: "
            "OpenVLA's greedy decoding, prefill then one token per step over a KV cache."
        ),
    )
    text_before_image: int = Field(
        0, ge=0, description="Instruction tokens placed before the image tokens (OpenVLA: 1, its BOS token)."
    )
    action_token_end: int | None = Field(
        None,
        description=(
            "One past the highest action-token id; default the vocabulary size. OpenVLA's action tokens "
            "end where its tokenizer's vocabulary does, below the padding rows of the embedding table."
        ),
    )
    action_tokens_descending: bool = Field(
        False, description="Bin 0 is the highest action-token id (OpenVLA's action tokenizer)."
    )
    greedy_over: Literal["action_bins", "vocabulary"] = Field(
        "action_bins",
        description=(
            "Autoregressive decoding feeds back the arg-max over the action bins, or over the whole "
            "vocabulary as Hugging Face's generate does for OpenVLA."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> VLAConfig:
        if self.dino.num_patches != self.siglip.num_patches:
            raise ValueError("both encoders must produce the same number of patches (image/patch size)")
        if self.llm_dim % self.llm_heads or (self.llm_dim // self.llm_heads) % 2:
            raise ValueError("llm_dim / llm_heads must be an even integer (rotary embeddings)")
        if self.vocab_size < self.action_bins:
            raise ValueError("vocab_size must be >= action_bins")
        if not self.action_bins <= self.action_tokens_end <= self.vocab_size:
            raise ValueError("action_token_end must lie in [action_bins, vocab_size]")
        if self.text_before_image > self.instruction_len:
            raise ValueError("text_before_image must be <= instruction_len")
        return self

    @property
    def action_tokens_end(self) -> int:
        return self.vocab_size if self.action_token_end is None else self.action_token_end

    @property
    def fused_width(self) -> int:
        return self.dino.width + self.siglip.width

    @property
    def sequence_len(self) -> int:
        return self.dino.num_patches + self.instruction_len + self.action_dims


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/o projections.

    The head count is an attribute and the head size is inferred at run time from q's width, so
    structured pruning can drop whole heads (rows of q/k/v, columns of o) and update `num_heads`.
    """

    def __init__(self, dim: int, heads: int, *, bias: bool, causal: bool) -> None:
        super().__init__()
        self.num_heads = heads
        self.causal = causal
        inner = dim  # heads * head_dim
        self.q_proj = nn.Linear(dim, inner, bias=bias)
        self.k_proj = nn.Linear(dim, inner, bias=bias)
        self.v_proj = nn.Linear(dim, inner, bias=bias)
        self.o_proj = nn.Linear(inner, dim, bias=bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.reshape(b, t, self.num_heads, -1).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        pos: int = 0,
        cache: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend over `x` (positions pos..pos+t); with `cache`, also over the cached keys/values,
        which are then extended (autoregressive decoding)."""
        b, t, _ = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        if rope is not None:
            cos, sin = rope[0][pos : pos + t], rope[1][pos : pos + t]
            q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        past = cache is not None and "k" in cache
        if cache is not None:
            if past:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        # One new token attends to everything before it; a block without a past is causal in itself.
        causal = self.causal and not (past and t == 1)
        if causal and past:
            mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - t)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos.to(x.dtype) + _rotate_half(x) * sin.to(x.dtype)


class ViTBlock(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=1e-6)
        self.attn = Attention(cfg.width, cfg.heads, bias=True, causal=False)
        self.norm2 = nn.LayerNorm(cfg.width, eps=1e-6)
        self.fc1 = nn.Linear(cfg.width, cfg.hidden_mlp)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.hidden_mlp, cfg.width)
        if cfg.layer_scale:
            self.ls1 = nn.Parameter(torch.full((cfg.width,), 1e-1))
            self.ls2 = nn.Parameter(torch.full((cfg.width,), 1e-1))
        else:
            self.ls1 = self.ls2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        x = x + (a * self.ls1 if self.ls1 is not None else a)
        m = self.fc2(self.act(self.fc1(self.norm2(x))))
        return x + (m * self.ls2 if self.ls2 is not None else m)


class ViTEncoder(nn.Module):
    """A ViT returning its patch features [B, num_patches, width] (class and register tokens dropped)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        n_prefix = 1 if cfg.class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width)) if cfg.class_token else None
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, cfg.num_registers, cfg.width)) if cfg.num_registers else None
        )
        # Position embeddings cover the class token (unless pos_embed_prefix is off) and the patches;
        # registers have none (DINOv2).
        covered = n_prefix if cfg.pos_embed_prefix else 0
        self.pos_embed = nn.Parameter(torch.zeros(1, covered + cfg.num_patches, cfg.width))
        self.pos_embed_prefix = cfg.pos_embed_prefix
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6) if cfg.final_norm else nn.Identity()
        self.num_prefix = n_prefix + cfg.num_registers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        b = x.shape[0]
        n_cls = 0 if self.cls_token is None else 1
        if not self.pos_embed_prefix:
            x = x + self.pos_embed
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        if self.pos_embed_prefix:
            x = x + self.pos_embed
        if self.register_tokens is not None:
            x = torch.cat([x[:, :n_cls], self.register_tokens.expand(b, -1, -1), x[:, n_cls:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, self.num_prefix :]


class Projector(nn.Module):
    """OpenVLA's fused GELU MLP projector: fused_width -> hidden -> llm_dim -> llm_dim."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)
        self.fc3 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: VLAConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.llm_dim, cfg.norm_eps)
        self.self_attn = Attention(cfg.llm_dim, cfg.llm_heads, bias=False, causal=True)
        self.post_attention_layernorm = RMSNorm(cfg.llm_dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.llm_dim, cfg.llm_ffn)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        *,
        pos: int = 0,
        cache: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, pos=pos, cache=cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class VLA(nn.Module):
    """forward(images_a, images_b, instruction_ids) -> action-bin logits [B, action_dims, action_bins]."""

    def __init__(self, cfg: VLAConfig) -> None:
        super().__init__()
        self.action_dims = cfg.action_dims
        self.action_bins = cfg.action_bins
        self.action_tokens_end = cfg.action_tokens_end
        self.action_tokens_descending = cfg.action_tokens_descending
        self.greedy_over = cfg.greedy_over
        self.text_before_image = cfg.text_before_image
        self.vision_dino = ViTEncoder(cfg.dino)
        self.vision_siglip = ViTEncoder(cfg.siglip)
        self.projector = Projector(cfg.fused_width, cfg.projector_hidden or 4 * cfg.fused_width, cfg.llm_dim)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.llm_dim)
        self.decoding = cfg.decoding
        # Parallel decoding: one learned query per action dimension, all 7 tokens in one pass.
        # Autoregressive decoding (OpenVLA's): greedy, one token at a time over a KV cache.
        self.action_queries = (
            nn.Parameter(torch.zeros(1, cfg.action_dims, cfg.llm_dim)) if cfg.decoding == "parallel" else None
        )
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.llm_layers))
        self.norm = RMSNorm(cfg.llm_dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.llm_dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg)
        # Not persistent: derived from the config, so state dicts carry only learned weights.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _prefix(
        self, images_a: torch.Tensor, images_b: torch.Tensor, instruction_ids: torch.Tensor
    ) -> torch.Tensor:
        patches = torch.cat([self.vision_dino(images_a), self.vision_siglip(images_b)], dim=-1)
        image_tokens = self.projector(patches)
        text = self.embed_tokens(instruction_ids)
        k = self.text_before_image
        return torch.cat([text[:, :k], image_tokens.to(text.dtype), text[:, k:]], dim=1)

    def hidden_states(
        self, images_a: torch.Tensor, images_b: torch.Tensor, instruction_ids: torch.Tensor
    ) -> torch.Tensor:
        """Final-norm hidden states at the action positions (parallel decoding)."""
        if self.action_queries is None:
            raise RuntimeError("hidden_states needs parallel decoding; this model decodes autoregressively")
        prefix = self._prefix(images_a, images_b, instruction_ids)
        queries = self.action_queries.expand(images_a.shape[0], -1, -1).to(prefix.dtype)
        x = torch.cat([prefix, queries], dim=1)
        rope = (self.rope_cos, self.rope_sin)
        for layer in self.layers:
            x = layer(x, rope)
        return self.norm(x[:, -self.action_dims :])

    def _bin_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._action_slice(self.lm_head(hidden))

    def _action_slice(self, logits: torch.Tensor) -> torch.Tensor:
        """The action-bin logits (bin order) out of the whole vocabulary's."""
        end = self.action_tokens_end
        bins = logits[..., end - self.action_bins : end]
        return bins.flip(-1) if self.action_tokens_descending else bins

    def _bin_token(self, bins: torch.Tensor) -> torch.Tensor:
        """The token id of each action bin index."""
        if self.action_tokens_descending:
            return self.action_tokens_end - 1 - bins
        return bins + (self.action_tokens_end - self.action_bins)

    def forward(
        self, images_a: torch.Tensor, images_b: torch.Tensor, instruction_ids: torch.Tensor
    ) -> torch.Tensor:
        if self.action_queries is not None:
            return self._bin_logits(self.hidden_states(images_a, images_b, instruction_ids))
        return self._generate(images_a, images_b, instruction_ids)

    def _generate(
        self, images_a: torch.Tensor, images_b: torch.Tensor, instruction_ids: torch.Tensor
    ) -> torch.Tensor:
        """Greedy decoding of the action tokens: prefill, then one token per step over a KV cache."""
        x = self._prefix(images_a, images_b, instruction_ids)
        rope = (self.rope_cos, self.rope_sin)
        caches: list[dict[str, torch.Tensor]] = [{} for _ in self.layers]
        pos = 0
        steps = []
        for i in range(self.action_dims):
            for layer, cache in zip(self.layers, caches, strict=True):
                x = layer(x, rope, pos=pos, cache=cache)
            pos += x.shape[1]
            full = self.lm_head(self.norm(x[:, -1:]))
            logits = self._action_slice(full)
            steps.append(logits)
            if i + 1 < self.action_dims:
                if self.greedy_over == "vocabulary":
                    token = full.argmax(-1)
                else:
                    token = self._bin_token(logits.argmax(-1))
                x = self.embed_tokens(token)
        return torch.cat(steps, dim=1)

    @torch.no_grad()
    def predict_actions(
        self, images_a: torch.Tensor, images_b: torch.Tensor, instruction_ids: torch.Tensor
    ) -> torch.Tensor:
        """Continuous actions in [-1, 1]: the centre of the arg-max bin of each action dimension."""
        bins = self.forward(images_a, images_b, instruction_ids).argmax(-1).float()
        return bins_to_actions(bins, self.action_bins)


def rope_tables(
    cfg: VLAConfig, device: str | torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary cos/sin tables [sequence_len, head_dim] (Llama's default rotary embedding)."""
    head_dim = cfg.llm_dim // cfg.llm_heads
    steps = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
    inv_freq = 1.0 / (cfg.rope_theta ** (steps / head_dim))
    angles = torch.outer(torch.arange(cfg.sequence_len, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def bins_to_actions(bins: torch.Tensor, num_bins: int = 256) -> torch.Tensor:
    """Bin index -> bin centre in [-1, 1] (uniform bins, as OpenVLA's action tokenizer)."""
    return (bins + 0.5) / num_bins * 2.0 - 1.0


def actions_to_bins(actions: torch.Tensor, num_bins: int = 256) -> torch.Tensor:
    """Continuous actions in [-1, 1] -> bin indices in [0, num_bins)."""
    idx = torch.floor((actions.clamp(-1.0, 1.0) + 1.0) / 2.0 * num_bins)
    return idx.clamp(0, num_bins - 1).long()


def _vla_init(model: VLA) -> None:
    # Llama/ViT-style init: N(0, 0.02) for projections and embeddings, zero biases.
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
    for enc in (model.vision_dino, model.vision_siglip):
        nn.init.normal_(enc.pos_embed, std=0.02)
        if enc.cls_token is not None:
            nn.init.normal_(enc.cls_token, std=0.02)
        if enc.register_tokens is not None:
            nn.init.normal_(enc.register_tokens, std=0.02)
    if model.action_queries is not None:
        nn.init.normal_(model.action_queries, std=0.02)


def _build_vla(cfg: VLAConfig) -> VLA:
    model = VLA(cfg)
    _vla_init(model)
    return model


def _vla_inputs(cfg: VLAConfig) -> list[InputSpec]:
    return [
        InputSpec(
            name="images_a",
            shape=[None, cfg.dino.in_channels, cfg.dino.image_size, cfg.dino.image_size],
            dtype="float32",
            low=-1.0,
            high=1.0,
        ),
        InputSpec(
            name="images_b",
            shape=[None, cfg.siglip.in_channels, cfg.siglip.image_size, cfg.siglip.image_size],
            dtype="float32",
            low=-1.0,
            high=1.0,
        ),
        # Instruction ids avoid the action-bin ids at the top of the vocabulary.
        InputSpec(
            name="instruction_ids",
            shape=[None, cfg.instruction_len],
            dtype="int64",
            low=0,
            high=(
                cfg.action_tokens_end - cfg.action_bins
                if cfg.action_tokens_end > cfg.action_bins
                else cfg.vocab_size
            ),
        ),
    ]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    config_model: type[_Config]
    builder: Callable[[Any], nn.Module]
    inputs: Callable[[Any], list[InputSpec]]
    output_kind: OutputKind


ARCHITECTURES: dict[str, Architecture] = {
    "mlp_policy": Architecture(
        name="mlp_policy",
        description="MLP policy: observation vector -> continuous action vector.",
        config_model=MLPPolicyConfig,
        builder=MLPPolicy,
        inputs=_mlp_inputs,
        output_kind="regression",
    ),
    "cnn_classifier": Architecture(
        name="cnn_classifier",
        description="Small CNN classifier for 8x8x1 images (sklearn digits, pixels scaled to [0, 1]).",
        config_model=CNNClassifierConfig,
        builder=CNNClassifier,
        inputs=_cnn_inputs,
        output_kind="logits",
    ),
    "vla": Architecture(
        name="vla",
        description=(
            "Vision-language-action model shaped like OpenVLA: DINO + SigLIP ViT encoders, fused GELU "
            "projector, Llama-style decoder; logits [batch, 7, 256] over action bins."
        ),
        config_model=VLAConfig,
        builder=_build_vla,
        inputs=_vla_inputs,
        output_kind="action_tokens",
    ),
}

PRESETS: dict[str, ArchitectureRef] = {
    # ~1.5M parameters, 32 px images (4x4 patches of 8 px): trains on a CPU in minutes.
    "vla_mini": ArchitectureRef(
        name="vla",
        config={
            "dino": {
                "image_size": 32,
                "patch_size": 8,
                "width": 64,
                "depth": 2,
                "heads": 2,
                "num_registers": 4,
                "class_token": True,
                "layer_scale": True,
            },
            "siglip": {
                "image_size": 32,
                "patch_size": 8,
                "width": 96,
                "depth": 2,
                "heads": 2,
                "class_token": False,
            },
            "projector_hidden": 640,
            "llm_dim": 128,
            "llm_layers": 4,
            "llm_heads": 4,
            "llm_ffn": 344,
            "vocab_size": 512,
            "instruction_len": 8,
        },
    ),
    # OpenVLA-7B: DINOv2 ViT-L/14 (4 registers) + SigLIP SO400M/14 at 224 px, projector
    # 2176 -> 8704 -> 4096 -> 4096, Llama-2-7B decoder (vocab 32064 as in OpenVLA's padded tokenizer).
    "openvla_7b": ArchitectureRef(
        name="vla",
        config={
            "dino": {
                "image_size": 224,
                "patch_size": 14,
                "width": 1024,
                "depth": 24,
                "heads": 16,
                "mlp_dim": 4096,
                "num_registers": 4,
                "class_token": True,
                "layer_scale": True,
            },
            "siglip": {
                "image_size": 224,
                "patch_size": 14,
                "width": 1152,
                "depth": 27,
                "heads": 16,
                "mlp_dim": 4304,
                "class_token": False,
            },
            "projector_hidden": 8704,
            "llm_dim": 4096,
            "llm_layers": 32,
            "llm_heads": 32,
            "llm_ffn": 11008,
            "vocab_size": 32064,
            "instruction_len": 32,
            # One action as OpenVLA computes it: vision, prefill, then 7 greedy token steps.
            "decoding": "autoregressive",
        },
    ),
}


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def as_ref(ref: ArchitectureRef | dict[str, Any] | str) -> ArchitectureRef:
    if isinstance(ref, ArchitectureRef):
        return ref
    if isinstance(ref, str):
        return ArchitectureRef(name=ref)
    if isinstance(ref, dict):
        try:
            return ArchitectureRef.model_validate(ref)
        except ValidationError as exc:
            raise InvalidArgumentError(f"invalid architecture reference: {exc.errors()[0]['msg']}") from exc
    raise InvalidArgumentError(f"invalid architecture reference of type {type(ref).__name__}")


def resolve(ref: ArchitectureRef | dict[str, Any] | str) -> tuple[Architecture, Any]:
    """The registry entry and the validated config for a reference.

    A preset may be named directly (`name="vla_mini"`) or through `config={"preset": ...}`; the
    rest of the config overrides the preset's values.
    """
    ref = as_ref(ref)
    name, config = ref.name, dict(ref.config)
    preset = config.pop("preset", None)
    if name in PRESETS:
        preset, name = name, PRESETS[name].name
    if preset is not None:
        if preset not in PRESETS or PRESETS[preset].name != name:
            raise InvalidArgumentError(
                f"unknown preset '{preset}' for architecture '{name}'",
                details=f"presets: {sorted(PRESETS)}",
            )
        config = _deep_merge(PRESETS[preset].config, config)
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise InvalidArgumentError(
            f"unknown architecture '{ref.name}'; known: {sorted(ARCHITECTURES)} and presets {sorted(PRESETS)}"
        )
    try:
        cfg = arch.config_model.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise InvalidArgumentError(
            f"invalid config for architecture '{name}': {where}: {first['msg']}", details=str(exc)
        ) from exc
    return arch, cfg


def build_model(
    ref: ArchitectureRef | dict[str, Any] | str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Build the architecture in eval mode, initialised from the config's seed (same seed, same weights)."""
    arch, cfg = resolve(ref)
    previous_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        try:
            # Build directly in the target dtype: a 7B model never exists in float32 on the way.
            if dtype is not None and dtype.is_floating_point:
                torch.set_default_dtype(dtype)
            if device is not None:
                with torch.device(device):
                    model = arch.builder(cfg)
            else:
                model = arch.builder(cfg)
        finally:
            torch.set_default_dtype(previous_dtype)
    if cfg.resized:
        apply_resized(model, cfg.resized)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


_RESIZE_ATTRS = (
    "in_features",
    "out_features",
    "in_channels",
    "out_channels",
    "num_features",
    "embedding_dim",
    "num_heads",
)


def resized_between(original: nn.Module, pruned: nn.Module) -> dict[str, dict[str, int]]:
    """The width attributes of `pruned`'s modules that differ from `original`'s (see `resized`)."""
    before = dict(original.named_modules())
    out: dict[str, dict[str, int]] = {}
    for name, module in pruned.named_modules():
        old = before.get(name)
        if old is None:
            continue
        attrs = {
            a: int(getattr(module, a))
            for a in _RESIZE_ATTRS
            if isinstance(getattr(module, a, None), int) and getattr(module, a) != getattr(old, a, None)
        }
        if isinstance(module, nn.LayerNorm) and module.normalized_shape != old.normalized_shape:
            attrs["normalized_shape"] = int(module.normalized_shape[-1])
        if attrs:
            out[name] = attrs
    return out


def apply_resized(model: nn.Module, resized: dict[str, dict[str, int]]) -> None:
    """Give the named modules the recorded widths (fresh, uninitialised tensors of the new shapes)."""

    def fresh(shape: tuple[int, ...], like: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(
            torch.empty(shape, dtype=like.dtype, device=like.device), requires_grad=like.requires_grad
        )

    for name, attrs in resized.items():
        try:
            m = model.get_submodule(name)
        except AttributeError as exc:
            raise InvalidArgumentError(f"resized layer '{name}' does not exist in this architecture") from exc
        if isinstance(m, nn.Linear):
            m.in_features = attrs.get("in_features", m.in_features)
            m.out_features = attrs.get("out_features", m.out_features)
            m.weight = fresh((m.out_features, m.in_features), m.weight)
            if m.bias is not None:
                m.bias = fresh((m.out_features,), m.bias)
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            m.in_channels = attrs.get("in_channels", m.in_channels)
            m.out_channels = attrs.get("out_channels", m.out_channels)
            m.weight = fresh((m.out_channels, m.in_channels // m.groups, *m.kernel_size), m.weight)
            if m.bias is not None:
                m.bias = fresh((m.out_channels,), m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = attrs.get("num_features", m.num_features)
            m.num_features = n
            if m.weight is not None:
                m.weight, m.bias = fresh((n,), m.weight), fresh((n,), m.bias)
            if m.running_mean is not None:
                m.running_mean = torch.zeros(n, dtype=m.running_mean.dtype, device=m.running_mean.device)
                m.running_var = torch.ones(n, dtype=m.running_var.dtype, device=m.running_var.device)
        elif isinstance(m, nn.LayerNorm):
            n = attrs.get("normalized_shape", m.normalized_shape[-1])
            m.normalized_shape = (n,)
            if m.weight is not None:
                m.weight = fresh((n,), m.weight)
            if m.bias is not None:
                m.bias = fresh((n,), m.bias)
        elif isinstance(m, nn.Embedding):
            m.embedding_dim = attrs.get("embedding_dim", m.embedding_dim)
            m.weight = fresh((m.num_embeddings, m.embedding_dim), m.weight)
        if "num_heads" in attrs and hasattr(m, "num_heads"):
            m.num_heads = attrs["num_heads"]


def input_specs(ref: ArchitectureRef | dict[str, Any] | str) -> list[InputSpec]:
    arch, cfg = resolve(ref)
    return arch.inputs(cfg)


def output_kind(ref: ArchitectureRef | dict[str, Any] | str) -> OutputKind:
    return resolve(ref)[0].output_kind


def count_parameters(ref: ArchitectureRef | dict[str, Any] | str) -> int:
    """Parameter count without allocating weights (built on the meta device)."""
    model = build_model(ref, device="meta")
    return sum(p.numel() for p in model.parameters())


def canonical_ref(ref: ArchitectureRef | dict[str, Any] | str) -> ArchitectureRef:
    """The base architecture name with the full validated config (presets expanded)."""
    arch, cfg = resolve(ref)
    return ArchitectureRef(name=arch.name, config=cfg.model_dump())


def describe() -> list[dict[str, Any]]:
    """Name, description, output kind and JSON schema of each architecture, plus the presets."""
    items: list[dict[str, Any]] = [
        {
            "name": a.name,
            "description": a.description,
            "output_kind": a.output_kind,
            "config_schema": a.config_model.model_json_schema(),
        }
        for a in ARCHITECTURES.values()
    ]
    for name, preset in PRESETS.items():
        items.append({"name": name, "preset_of": preset.name, "config": preset.config})
    return items
