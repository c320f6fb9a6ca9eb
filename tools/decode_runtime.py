"""A deploy runtime for decoder models in the gpt-fast style: a static KV cache and compiled steps.

`DecodeRuntime` wraps an eager decoder (the `vla` architecture, or a Llama-style transformers
`*ForCausalLM` the service loaded) and runs the same computation with:

- a KV cache of preallocated tensors per layer, [batch, kv_heads, max_len, head_dim], written with
  `index_copy_` at a position *tensor* (no Python counter changes between steps), read through a mask
  `key_position <= query_position`; so one decode step is a fixed-shape graph that a CUDA graph captures
  whole (`torch.compile(mode="reduce-overhead")`; the cache tensors are marked static addresses, as
  gpt-fast's module buffers are);
- the vision encoders, projector and prefill compiled as one function, each decode step as another
  (inductor on CPU and CUDA);
- greedy decoding identical to the eager model's (`VLA._generate`: the arg-max over the action bins or
  the vocabulary fed back; transformers' greedy `generate`).

The runtime reads the eager model's own modules at every call (projections, norms, MLPs, embeddings),
so what `quantize` put there (torchao int8 / int4 / float8 weights, bitsandbytes layers) runs inside
the compiled graphs, and pruning that resized layers or dropped heads is followed. forward keeps the
wrapped model's contract (VLA: action-bin logits [batch, 7, 256]; transformers: {"logits": ...}), so the
gate measures it like any other candidate. Under `torch.export` the same static-cache decode is traced
with caches local to the call (batch stays dynamic): that `.pt2` is the download, and
`load_runtime(path, device=..., mode=...)` is its loader entry point.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from tools.errors import UnsupportedFormatError

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LLAMA_STYLE = ("llama", "mistral", "qwen2")  # transformers model types whose decoder layers this runtime runs
DEFAULT_MAX_LEN = 512  # cache length for transformers decoders (prompt + generated tokens)
Tables = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # rope cos, rope sin [max_len, head_dim], positions


@dataclass(frozen=True)
class LayerShape:
    heads: int
    kv_heads: int
    head_dim: int


def _out_features(module: nn.Module) -> int:
    out = getattr(module, "out_features", None)
    if out is None:
        out = module.weight.shape[0]  # type: ignore[union-attr]
    return int(out)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos.to(x.dtype) + _rotate_half(x) * sin.to(x.dtype)


class DecoderView(abc.ABC):
    """Where an eager decoder keeps its parts; looked up at each call, never copied."""

    kind: str = ""

    def __init__(self, root: nn.Module) -> None:
        self.root = root

    @abc.abstractmethod
    def layers(self) -> nn.ModuleList:
        """The decoder layers, in order."""

    @abc.abstractmethod
    def embed(self) -> nn.Module:
        """The token embedding."""

    @abc.abstractmethod
    def norm(self) -> nn.Module:
        """The final norm."""

    def lm_head(self) -> nn.Module:
        return self.root.lm_head  # type: ignore[return-value]

    @abc.abstractmethod
    def rope_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary (cos, sin) tables at every position."""

    @abc.abstractmethod
    def shape(self, layer: nn.Module) -> LayerShape:
        """Head counts and sizes of one layer."""


class VLAView(DecoderView):
    kind = "vla"

    def layers(self) -> nn.ModuleList:
        return self.root.layers  # type: ignore[return-value]

    def embed(self) -> nn.Module:
        return self.root.embed_tokens  # type: ignore[return-value]

    def norm(self) -> nn.Module:
        return self.root.norm  # type: ignore[return-value]

    def rope_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.root.rope_cos.to(device), self.root.rope_sin.to(device)  # type: ignore[operator]

    def shape(self, layer: nn.Module) -> LayerShape:
        attn = layer.self_attn
        heads = int(attn.num_heads)  # structured pruning updates it when it drops heads
        dim = _out_features(attn.q_proj) // heads
        return LayerShape(heads, _out_features(attn.k_proj) // dim, dim)


class CausalLMView(DecoderView):
    """A transformers Llama-style `*ForCausalLM` (root.model: embed_tokens, layers, norm, rotary_emb)."""

    kind = "causal_lm"

    def __init__(self, root: nn.Module, max_len: int) -> None:
        super().__init__(root)
        self.max_len = max_len

    def layers(self) -> nn.ModuleList:
        return self.root.model.layers  # type: ignore[return-value]

    def embed(self) -> nn.Module:
        return self.root.model.embed_tokens  # type: ignore[return-value]

    def norm(self) -> nn.Module:
        return self.root.model.norm  # type: ignore[return-value]

    def rope_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # The model's own rotary module (it applies any rope scaling the config asks for), for every position.
        positions = torch.arange(self.max_len, device=device)[None]
        probe = torch.zeros(1, device=device, dtype=torch.float32)
        cos, sin = self.root.model.rotary_emb(probe, positions)  # type: ignore[operator]
        return cos[0].float(), sin[0].float()

    def shape(self, layer: nn.Module) -> LayerShape:
        attn = layer.self_attn
        dim = int(attn.head_dim)
        return LayerShape(_out_features(attn.q_proj) // dim, _out_features(attn.k_proj) // dim, dim)


def decoder_view(model: nn.Module, *, max_len: int = DEFAULT_MAX_LEN) -> tuple[DecoderView, nn.Module]:
    """(how to read the decoder, the module holding it) for a handle's model; UnsupportedFormatError if it
    is not a decoder this runtime runs."""
    from tools.architectures import VLA

    if isinstance(model, VLA):
        return VLAView(model), model
    from tools.model_dirs import TransformersModule

    inner = model.model if isinstance(model, TransformersModule) else model
    config = getattr(inner, "config", None)
    model_type = str(getattr(config, "model_type", "") or "")
    backbone = getattr(inner, "model", None)
    if (
        model_type in LLAMA_STYLE
        and hasattr(inner, "lm_head")
        and all(hasattr(backbone, n) for n in ("embed_tokens", "layers", "norm", "rotary_emb"))
    ):
        limit = int(getattr(config, "max_position_embeddings", max_len) or max_len)
        return CausalLMView(inner, min(max_len, limit)), inner
    what = f"a transformers {type(inner).__name__} ({model_type})" if model_type else type(model).__name__
    raise UnsupportedFormatError(
        f"compile_model builds a static-KV-cache decode runtime for decoder models (the vla architecture, "
        f"transformers {', '.join(LLAMA_STYLE)} causal LMs); this model is {what}",
        details="other torch models are measured as they are; ONNX models run in ONNX Runtime",
    )


class DecodeRuntime(nn.Module):
    """The static-cache runtime around an eager decoder; `forward` keeps the wrapped model's contract."""

    def __init__(
        self,
        model: nn.Module,
        *,
        compile: bool = False,
        mode: str = "default",
        max_len: int = DEFAULT_MAX_LEN,
    ) -> None:
        super().__init__()
        self.model = model
        self.compile_enabled = compile
        self.mode = mode
        self.max_len = max_len
        self.view = decoder_view(model, max_len=max_len)[0]
        self._compiled: dict[str, Any] = {}
        self._state: dict[tuple[Any, ...], Any] = {}  # caches, positions, rope tables per batch / device

    # -- copies: the compiled functions and caches belong to one instance -------------------------

    def __deepcopy__(self, memo: dict[int, Any]) -> DecodeRuntime:
        clone = type(self).__new__(type(self))
        nn.Module.__init__(clone)
        clone.model = copy.deepcopy(self.model, memo)
        clone.compile_enabled, clone.mode, clone.max_len = self.compile_enabled, self.mode, self.max_len
        clone.view = decoder_view(clone.model, max_len=self.max_len)[0]
        clone._compiled, clone._state = {}, {}
        clone.train(self.training)
        return clone

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_compiled"], state["_state"] = {}, {}
        return state

    def _apply(self, fn: Any, recurse: bool = True) -> DecodeRuntime:  # .to(), .cuda(), .half()
        self._compiled, self._state = {}, {}
        return super()._apply(fn, recurse)  # type: ignore[return-value]

    # -- what it runs ---------------------------------------------------------------------------

    @property
    def _decoder(self) -> Any:
        """The module holding the decoder (the VLA, or the transformers LM inside its wrapper); not a
        registered submodule, so the state dict holds each weight once, under `model.`."""
        return self.view.root

    @property
    def decoding(self) -> str:
        if self.view.kind == "vla":
            return str(self._decoder.decoding)
        return "causal_lm"

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        weight = self.view.embed().weight
        return weight.device, weight.dtype

    def _fn(self, name: str) -> Any:
        """The step `name` (compiled once per instance when compiling is on)."""
        if torch.compiler.is_exporting():
            return getattr(self, f"_{name}_impl")  # torch.export traces the plain steps
        fn = self._compiled.get(name)
        if fn is None:
            impl = getattr(self, f"_{name}_impl")
            if self.compile_enabled:
                fn = torch.compile(impl, mode=None if self.mode == "default" else self.mode, fullgraph=False)
            else:
                fn = impl
            self._compiled[name] = fn
        return fn

    def _cudagraphs(self) -> bool:
        device, _ = self._device_dtype()
        return self.compile_enabled and device.type == "cuda" and self.mode == "reduce-overhead"

    def _tables(self) -> Tables:
        device, _ = self._device_dtype()
        key = ("tables", str(device))
        tables = self._state.get(key)
        if tables is None:
            with torch.inference_mode(False), torch.no_grad():
                cos, sin = self.view.rope_tables(device)
                positions = torch.arange(cos.shape[0], device=device)
                if self.compile_enabled:  # CUDA graphs read them in place instead of copying them in
                    for table in (cos, sin, positions):
                        torch._dynamo.mark_static_address(table)
            tables = (cos, sin, positions)
            self._state[key] = tables
        return tables

    def _caches(self, batch: int, *, local: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One (k, v) pair per layer for `batch` rows: allocated once and kept (static addresses), or fresh
        ones local to the call under torch.export (the program then owns them and batch stays dynamic)."""
        device, dtype = self._device_dtype()
        length = self._tables()[0].shape[0]
        key = ("caches", batch, str(device), dtype)
        shapes = [self.view.shape(layer) for layer in self.view.layers()]
        if not local:
            cached = self._state.get(key)
            if cached is not None and cached[0] == shapes:
                return cached[1]
        caches = []
        with torch.inference_mode(False), torch.no_grad():
            for s in shapes:
                k = torch.zeros(batch, s.kv_heads, length, s.head_dim, device=device, dtype=dtype)
                v = torch.zeros_like(k)
                if not local and self.compile_enabled:
                    torch._dynamo.mark_static_address(k)
                    torch._dynamo.mark_static_address(v)
                caches.append((k, v))
        if not local:
            self._state[key] = (shapes, caches)
        return caches

    # -- the decoder ----------------------------------------------------------------------------

    def _attend(
        self,
        layer: nn.Module,
        x: torch.Tensor,
        pos: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        tables: Tables,
    ) -> torch.Tensor:
        attn = layer.self_attn
        s = self.view.shape(layer)
        b, t, _ = x.shape
        q = attn.q_proj(x).view(b, t, s.heads, s.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, t, s.kv_heads, s.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, t, s.kv_heads, s.head_dim).transpose(1, 2)
        cos_table, sin_table, positions = tables
        cos, sin = cos_table[pos], sin_table[pos]
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        if cache is not None:
            k_cache, v_cache = cache
            k_cache.index_copy_(2, pos, k)
            v_cache.index_copy_(2, pos, v)
            k, v = k_cache, v_cache
            # A query sees the keys at its position and before; later slots hold stale or zero rows.
            visible = positions[None, :] <= pos[:, None]
            mask = visible if mask is None else mask & visible
        if s.kv_heads != s.heads:
            k = k.repeat_interleave(s.heads // s.kv_heads, dim=1)
            v = v.repeat_interleave(s.heads // s.kv_heads, dim=1)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def _layers(
        self,
        x: torch.Tensor,
        pos: torch.Tensor,
        caches: list[tuple[torch.Tensor, torch.Tensor]] | None,
        tables: Tables,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for i, layer in enumerate(self.view.layers()):
            cache = None if caches is None else caches[i]
            x = x + self._attend(layer, layer.input_layernorm(x), pos, cache, mask, tables)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x

    # -- VLA ------------------------------------------------------------------------------------

    def _vla_token(self, full: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        vla = self._decoder
        if vla.greedy_over == "vocabulary":
            return full.argmax(-1)
        return vla._bin_token(bins.argmax(-1))

    def _vla_prefill_impl(
        self,
        images_a: torch.Tensor,
        images_b: torch.Tensor,
        instruction_ids: torch.Tensor,
        caches: list[tuple[torch.Tensor, torch.Tensor]],
        tables: Tables,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Vision encoders, projector, prefill over [image; instruction] tokens: the first action token."""
        vla = self._decoder
        x = vla._prefix(images_a, images_b, instruction_ids)
        h = self._layers(x, tables[2][: x.shape[1]], caches, tables)
        full = vla.lm_head(vla.norm(h[:, -1:]))
        bins = vla._action_slice(full)
        return bins, self._vla_token(full, bins)

    def _vla_decode_impl(
        self,
        token: torch.Tensor,
        pos: torch.Tensor,
        caches: list[tuple[torch.Tensor, torch.Tensor]],
        tables: Tables,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One action token: a fixed-shape step (token [B, 1], position [1]) over the static cache."""
        vla = self._decoder
        h = self._layers(vla.embed_tokens(token), pos, caches, tables)
        full = vla.lm_head(vla.norm(h))
        bins = vla._action_slice(full)
        return bins, self._vla_token(full, bins)

    def _vla_parallel_impl(
        self, images_a: torch.Tensor, images_b: torch.Tensor, instruction_ids: torch.Tensor, tables: Tables
    ) -> torch.Tensor:
        """Parallel decoding: vision, then one pass over [image; instruction; action queries]."""
        vla = self._decoder
        prefix = vla._prefix(images_a, images_b, instruction_ids)
        queries = vla.action_queries.expand(images_a.shape[0], -1, -1).to(prefix.dtype)
        x = torch.cat([prefix, queries], dim=1)
        h = self._layers(x, tables[2][: x.shape[1]], None, tables)
        return vla._bin_logits(vla.norm(h[:, -vla.action_dims :]))

    def _vla_forward(
        self, images_a: torch.Tensor, images_b: torch.Tensor, instruction_ids: torch.Tensor
    ) -> torch.Tensor:
        vla = self._decoder
        tables = self._tables()
        if vla.action_queries is not None:
            return self._fn("vla_parallel")(images_a, images_b, instruction_ids, tables)
        exporting = torch.compiler.is_exporting()
        caches = self._caches(images_a.shape[0], local=exporting)
        graphs = self._cudagraphs()
        # [image tokens; instruction] as VLA._prefix lays them out: one image token per patch.
        ph, pw = vla.vision_dino.patch_embed.stride
        prefix_len = (images_a.shape[-2] // ph) * (images_a.shape[-1] // pw) + instruction_ids.shape[1]
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        bins, token = self._fn("vla_prefill")(images_a, images_b, instruction_ids, caches, tables)
        steps = [bins.clone() if graphs else bins]
        positions = tables[2]
        for i in range(1, vla.action_dims):
            pos = positions[prefix_len + i - 1 : prefix_len + i]
            if graphs:
                token = token.clone()
                torch.compiler.cudagraph_mark_step_begin()
            bins, token = self._fn("vla_decode")(token, pos, caches, tables)
            steps.append(bins.clone() if graphs else bins)
        return torch.cat(steps, dim=1)

    # -- transformers causal LMs ----------------------------------------------------------------

    def _lm_prefill_impl(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, tables: Tables
    ) -> torch.Tensor:
        """Logits at every position (the wrapped model's forward), causal and padding masks applied."""
        lm = self._decoder
        x = self.view.embed()(input_ids)
        t = input_ids.shape[1]
        pos = tables[2][:t]
        mask = None
        if attention_mask is not None:
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            keep = attention_mask.bool()[:, None, None, :]
            # Every query keeps itself, so a padding row is never all masked (NaN).
            mask = (causal & keep) | torch.eye(t, dtype=torch.bool, device=x.device)
        h = self._layers(x, pos, None, tables, mask)
        return lm.lm_head(self.view.norm()(h))

    def _lm_cached_impl(
        self,
        input_ids: torch.Tensor,
        pos: torch.Tensor,
        caches: list[tuple[torch.Tensor, torch.Tensor]],
        tables: Tables,
    ) -> torch.Tensor:
        """Prefill (pos = 0..t-1) or one decode step (pos = [n]) over the static cache: last-token logits."""
        x = self.view.embed()(input_ids)
        h = self._layers(x, pos, caches, tables)
        return self._decoder.lm_head(self.view.norm()(h[:, -1:]))

    def _lm_decode_impl(
        self,
        token: torch.Tensor,
        pos: torch.Tensor,
        caches: list[tuple[torch.Tensor, torch.Tensor]],
        tables: Tables,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._lm_cached_impl(token, pos, caches, tables)
        return logits, logits.argmax(-1)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding of a transformers causal LM over the static cache: [batch, prompt + new] ids."""
        if self.view.kind != "causal_lm":
            raise UnsupportedFormatError("generate is for causal LMs; a VLA's forward decodes its actions")
        t = input_ids.shape[1]
        tables = self._tables()
        length = tables[0].shape[0]
        if t + max_new_tokens > length:
            raise UnsupportedFormatError(
                f"prompt ({t}) + new tokens ({max_new_tokens}) exceed the cache length {length}"
            )
        caches = self._caches(input_ids.shape[0])
        positions = tables[2]
        graphs = self._cudagraphs()
        logits = self._fn("lm_cached")(input_ids, positions[:t], caches, tables)
        token = logits.argmax(-1)
        out = [input_ids, token]
        for n in range(t, t + max_new_tokens - 1):
            if graphs:
                token = token.clone()
                torch.compiler.cudagraph_mark_step_begin()
            _, token = self._fn("lm_decode")(token, positions[n : n + 1], caches, tables)
            out.append(token.clone() if graphs else token)
        return torch.cat(out, dim=1)[:, : t + max_new_tokens]

    # -- the wrapped model's contract ------------------------------------------------------------

    def run(self, *args: torch.Tensor) -> Any:
        if torch.jit.is_tracing():
            raise UnsupportedFormatError(
                "the decode runtime is saved as a torch.export program (.pt2) holding its static-cache "
                "decode; TorchScript cannot trace it"
            )
        if torch.is_inference_mode_enabled() and not torch.compiler.is_exporting():
            # Inputs made outside inference mode (the benchmark's) and inside it (evaluate's) differ in
            # dispatch keys, which a compiled graph guards on: one kind only, no recompile.
            args = tuple(a if a.is_inference() else a.clone() for a in args)
        if self.view.kind == "vla":
            return self._vla_forward(*args)
        input_ids = args[0]
        mask = args[1] if len(args) > 1 else None
        return {"logits": self._fn("lm_prefill")(input_ids, mask, self._tables())}

    def describe(self) -> dict[str, Any]:
        device, dtype = self._device_dtype()
        return {
            "runtime": "static_kv_cache",
            "decoder": self.view.kind,
            "decoding": self.decoding,
            "compiled": self.compile_enabled,
            "mode": self.mode,
            "backend": "inductor" if self.compile_enabled else "eager",
            "cuda_graphs": self.compile_enabled and self.mode == "reduce-overhead" and device.type == "cuda",
            "cache_length": int(self._tables()[0].shape[0]),
            "dtype": str(dtype).removeprefix("torch."),
            "device": str(device),
        }


class VLADecodeRuntime(DecodeRuntime):
    """forward(images_a, images_b, instruction_ids) -> action-bin logits, as the VLA's."""

    def forward(
        self, images_a: torch.Tensor, images_b: torch.Tensor, instruction_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.run(images_a, images_b, instruction_ids)  # type: ignore[no-any-return]


class TextDecodeRuntime(DecodeRuntime):
    """forward(input_ids, attention_mask) -> {"logits"}, as the transformers module's."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return self.run(input_ids, attention_mask)


class TokenIdsDecodeRuntime(DecodeRuntime):
    """forward(input_ids) -> {"logits"}."""

    def forward(self, input_ids: torch.Tensor) -> Any:
        return self.run(input_ids)


def decode_runtime(model: nn.Module, **options: Any) -> DecodeRuntime:
    """The runtime around `model`, its forward named as the model's inputs (exporters bind them by name).
    `options`: compile, mode, max_len (see DecodeRuntime)."""
    view, _ = decoder_view(model)
    if view.kind == "vla":
        return VLADecodeRuntime(model, **options)
    names = list(getattr(model, "input_names", ["input_ids", "attention_mask"]))
    if names == ["input_ids"]:
        return TokenIdsDecodeRuntime(model, **options)
    if names != ["input_ids", "attention_mask"]:
        raise UnsupportedFormatError(
            f"the decode runtime takes input_ids (and attention_mask); this model's inputs are {names}"
        )
    return TextDecodeRuntime(model, **options)


def load_runtime(path: Path | str, *, device: str = "cpu", mode: str | None = "default") -> Any:
    """The loader entry point of a downloaded runtime: the `.pt2` (torch.export program of the static-cache
    decode) as a callable module, compiled with `mode` (None: run the program as it is). CUDA with
    mode="reduce-overhead" replays the whole action as CUDA graphs."""
    program = torch.export.load(str(path))
    module = program.module().to(device)
    if mode is None:
        return module
    if mode not in COMPILE_MODES:
        from tools.errors import InvalidArgumentError

        raise InvalidArgumentError(f"unknown mode '{mode}'; choose one of {', '.join(COMPILE_MODES)}")
    return torch.compile(module, mode=None if mode == "default" else mode)
