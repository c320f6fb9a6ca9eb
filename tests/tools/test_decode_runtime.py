"""The static-KV-cache decode runtime (tools.decode_runtime), uncompiled: the same greedy tokens as the eager
model (vla-mini, OpenVLA's layout switches, a transformers Llama), a cache that is written in place at
position tensors, and a torch.export program of the decode that the loader entry point runs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tools.architectures import build_model, canonical_ref, input_specs
from tools.decode_runtime import decode_runtime, load_runtime
from tools.errors import UnsupportedFormatError
from tools.handle import ArchitectureRef, ModelHandle
from tools.runtime import synthesize_inputs, to_tensors

SAMPLES = 100
# A small autoregressive VLA (one block per encoder, one decoder layer): inductor compiles it in seconds.
TINY_VLA = {
    "dino": {"image_size": 16, "patch_size": 8, "width": 32, "depth": 1, "heads": 2, "num_registers": 4,
             "layer_scale": True},
    "siglip": {"image_size": 16, "patch_size": 8, "width": 32, "depth": 1, "heads": 2, "class_token": False},
    "projector_hidden": 128, "llm_dim": 64, "llm_layers": 1, "llm_heads": 2, "llm_ffn": 128,
    "vocab_size": 300, "instruction_len": 4, "decoding": "autoregressive",
}  # fmt: skip


def vla_handle(seed: int = 0, **config: object) -> ModelHandle:
    ref = canonical_ref(ArchitectureRef(name="vla", config={"preset": "vla_mini", **config}))
    torch.manual_seed(seed)
    return ModelHandle(
        runtime="torch",
        format="state_dict",
        model=build_model(ref).eval(),
        inputs=input_specs(ref),
        architecture=ref,
    )


def fixed_inputs(handle: ModelHandle, n: int = SAMPLES, seed: int = 7) -> list[torch.Tensor]:
    return to_tensors(handle, synthesize_inputs(handle.inputs, n, seed=seed))


@pytest.mark.parametrize(
    "config",
    [
        {"decoding": "autoregressive"},
        # OpenVLA's layout: BOS before the image tokens, descending action ids below padding rows, greedy
        # over the whole vocabulary.
        {
            "decoding": "autoregressive",
            "text_before_image": 1,
            "action_token_end": 500,
            "action_tokens_descending": True,
            "greedy_over": "vocabulary",
        },
        {"decoding": "parallel"},
    ],
    ids=["autoregressive", "openvla_layout", "parallel"],
)
def test_static_cache_gives_the_eager_action_tokens_on_vla_mini(config: dict[str, object]) -> None:
    handle = vla_handle(**config)
    runtime = decode_runtime(handle.model)
    inputs = fixed_inputs(handle)
    with torch.inference_mode():
        eager = handle.model(*inputs)
        static = runtime(*inputs)
    assert static.shape == eager.shape == (SAMPLES, 7, 256)
    assert torch.equal(static.argmax(-1), eager.argmax(-1))  # all 7 tokens of all 100 inputs
    torch.testing.assert_close(static, eager, atol=1e-4, rtol=1e-4)


def test_cache_is_preallocated_and_written_in_place_at_position_tensors() -> None:
    handle = vla_handle(decoding="autoregressive")
    runtime = decode_runtime(handle.model)
    one = fixed_inputs(handle, 1, seed=1)
    other = fixed_inputs(handle, 1, seed=2)
    with torch.inference_mode():
        first = runtime(*one)
        caches = runtime._caches(1)
        pointers = [(k.data_ptr(), v.data_ptr()) for k, v in caches]
        runtime(*other)  # overwrites every slot it reads, so no stale row leaks into the next action
        again = runtime(*one)
    assert [(k.data_ptr(), v.data_ptr()) for k, v in runtime._caches(1)] == pointers
    assert torch.equal(first, again)
    k, _ = caches[0]
    length = runtime._tables()[0].shape[0]
    assert k.shape == (1, 4, length, 32)  # [batch, kv heads, max positions, head dim]
    # Prefill (16 image + 8 instruction tokens) and 6 decode steps filled positions 0..29, the last unused.
    assert bool(k[0, :, :30].abs().sum(-1).gt(0).all()) and bool(k[0, :, 30:].eq(0).all())


def test_deepcopy_and_handle_clone_rebuild_the_runtime_around_a_copy() -> None:
    handle = vla_handle(decoding="autoregressive")
    runtime = decode_runtime(handle.model)
    inputs = fixed_inputs(handle, 4)
    with torch.inference_mode():
        want = runtime(*inputs)
    clone = copy.deepcopy(runtime)
    assert clone.model is not runtime.model and clone._state == {}
    with torch.inference_mode():
        assert torch.equal(clone(*inputs), want)


def test_export_program_is_the_static_cache_decode_and_load_runtime_runs_it(tmp_path: Path) -> None:
    # One block per encoder and one decoder layer: export traces 7 decode steps, kept small here.
    handle = vla_handle(decoding="autoregressive", llm_layers=1, dino={"depth": 1}, siglip={"depth": 1})
    runtime = decode_runtime(handle.model)
    inputs = fixed_inputs(handle, 3)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(runtime, tuple(inputs), dynamic_shapes=tuple({0: batch} for _ in inputs))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("index_copy" in t for t in targets)  # cache writes at position tensors, in the graph
    path = tmp_path / "runtime.pt2"
    torch.export.save(program, str(path))
    loaded = load_runtime(path, mode=None)
    more = fixed_inputs(handle, 5, seed=9)  # another batch size: the program's caches are its own
    with torch.inference_mode():
        assert torch.equal(loaded(*more).argmax(-1), handle.model(*more).argmax(-1))
    with pytest.raises(UnsupportedFormatError, match="TorchScript"):
        torch.jit.trace(runtime, tuple(inputs), check_trace=False)


def _llama(num_kv_heads: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=64,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_llama_decoder_greedy_tokens_and_logits_match_transformers(kv_heads: int) -> None:
    from tools.model_dirs import wrap_transformers_model

    lm = _llama(kv_heads)
    wrapped = wrap_transformers_model(lm, ["input_ids", "attention_mask"])
    runtime = decode_runtime(wrapped, max_len=64)
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, 96, (4, 10), generator=g)
    mask = torch.ones_like(prompt)
    with torch.inference_mode():
        want = lm.generate(prompt, attention_mask=mask, max_new_tokens=12, do_sample=False, use_cache=True)
        got = runtime.generate(prompt, max_new_tokens=12)
        eager_logits = wrapped(prompt, mask)["logits"]
        logits = runtime(prompt, mask)["logits"]
    assert torch.equal(got, want)
    torch.testing.assert_close(logits, eager_logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(UnsupportedFormatError, match="cache length"):
        runtime.generate(prompt, max_new_tokens=60)


def test_non_decoders_are_refused_with_a_typed_error() -> None:
    ref = canonical_ref(ArchitectureRef(name="mlp_policy", config={"obs_dim": 8, "act_dim": 2}))
    with pytest.raises(UnsupportedFormatError, match="decoder"):
        decode_runtime(build_model(ref))
