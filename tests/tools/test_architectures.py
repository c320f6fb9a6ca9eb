"""The architecture registry: seeded builds, signatures, presets, and the OpenVLA-7B shape by arithmetic."""

from __future__ import annotations

import pytest
import torch

from tools.architectures import (
    ARCHITECTURES,
    PRESETS,
    actions_to_bins,
    bins_to_actions,
    build_model,
    canonical_ref,
    count_parameters,
    input_specs,
    output_kind,
)
from tools.errors import InvalidArgumentError
from tools.handle import ArchitectureRef
from tools.runtime import synthesize_inputs


def _run(ref, batch: int = 3) -> torch.Tensor:
    model = build_model(ref)
    specs = input_specs(ref)
    arrays = synthesize_inputs(specs, batch, seed=1)
    with torch.inference_mode():
        return model(*[torch.from_numpy(arrays[s.name]) for s in specs])


@pytest.mark.parametrize(
    ("ref", "shape", "kind"),
    [
        (ArchitectureRef(name="mlp_policy", config={"obs_dim": 11, "act_dim": 3}), (3, 3), "regression"),
        ({"name": "cnn_classifier"}, (3, 10), "logits"),
        ("vla_mini", (3, 7, 256), "action_tokens"),
    ],
)
def test_builds_run_with_their_signature(ref, shape, kind) -> None:
    out = _run(ref)
    assert tuple(out.shape) == shape
    assert torch.isfinite(out).all()
    assert output_kind(ref) == kind


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    a = build_model({"name": "mlp_policy", "config": {"seed": 3}}).state_dict()
    b = build_model({"name": "mlp_policy", "config": {"seed": 3}}).state_dict()
    c = build_model({"name": "mlp_policy", "config": {"seed": 4}}).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # Building must not consume the caller's global RNG stream.
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    build_model("vla_mini")
    assert torch.equal(torch.rand(1), expected)


def test_tanh_output_bounds_actions() -> None:
    ref = {"name": "mlp_policy", "config": {"tanh_output": True, "obs_dim": 4}}
    model = build_model(ref)
    out = model(torch.full((5, 4), 100.0))
    assert out.abs().max() <= 1.0


def test_vla_mini_is_small_and_state_dict_has_only_weights() -> None:
    n = count_parameters("vla_mini")
    assert 1_000_000 <= n <= 3_000_000
    model = build_model("vla_mini")
    assert sum(p.numel() for p in model.parameters()) == n
    assert not any("rope" in k for k in model.state_dict())
    names = [s.name for s in input_specs("vla_mini")]
    assert names == ["images_a", "images_b", "instruction_ids"]


def test_openvla_7b_parameter_count_by_arithmetic() -> None:
    # Meta device only: ~7.5B parameters (Llama-2-7B + DINOv2-L + SigLIP-SO400M + projector).
    n = count_parameters("openvla_7b")
    assert 7.4e9 < n < 7.7e9
    cfg = canonical_ref("openvla_7b").config
    assert cfg["dino"]["width"] + cfg["siglip"]["width"] == 2176
    assert (cfg["projector_hidden"], cfg["llm_dim"], cfg["vocab_size"]) == (8704, 4096, 32064)
    model = build_model("openvla_7b", device="meta")
    proj = model.projector
    assert (proj.fc1.in_features, proj.fc1.out_features, proj.fc2.out_features, proj.fc3.out_features) == (
        2176,
        8704,
        4096,
        4096,
    )
    assert len(model.layers) == 32 and model.layers[0].mlp.gate_proj.out_features == 11008


def test_preset_overrides_and_errors() -> None:
    small = {"name": "vla", "config": {"preset": "vla_mini", "llm_layers": 1}}
    assert count_parameters(small) < count_parameters("vla_mini")
    assert canonical_ref(small).config["llm_layers"] == 1
    assert set(PRESETS) >= {"vla_mini", "openvla_7b"}
    assert set(ARCHITECTURES) >= {"mlp_policy", "cnn_classifier", "vla"}
    with pytest.raises(InvalidArgumentError, match="unknown architecture"):
        build_model({"name": "resnet9000"})
    with pytest.raises(InvalidArgumentError, match="obs_dim"):
        build_model({"name": "mlp_policy", "config": {"obs_dim": 0}})
    with pytest.raises(InvalidArgumentError):
        build_model({"name": "mlp_policy", "config": {"no_such_field": 1}})
    with pytest.raises(InvalidArgumentError, match="patches"):
        build_model({"name": "vla", "config": {"preset": "vla_mini", "siglip": {"patch_size": 4}}})


def test_action_bins_round_trip() -> None:
    actions = torch.linspace(-1, 1, 101)
    bins = actions_to_bins(actions)
    assert bins.min() == 0 and bins.max() == 255
    assert (bins_to_actions(bins) - actions).abs().max() <= 1.0 / 256 + 1e-6


def test_autoregressive_decoding_matches_full_recomputation() -> None:
    """The KV-cached greedy decoder gives the logits a full causal pass over the same tokens gives."""
    ref = {"name": "vla", "config": {"preset": "vla_mini", "llm_layers": 2, "decoding": "autoregressive"}}
    model = build_model(ref)
    assert model.action_queries is None
    specs = input_specs(ref)
    arrays = synthesize_inputs(specs, 2, seed=3)
    a, b, ids = (torch.from_numpy(arrays[s.name]) for s in specs)
    with torch.inference_mode():
        logits = model(a, b, ids)
        assert tuple(logits.shape) == (2, 7, 256)
        prefix = model._prefix(a, b, ids)
        offset = model.embed_tokens.num_embeddings - 256
        tokens = model.embed_tokens(logits.argmax(-1)[:, :-1] + offset)
        x = torch.cat([prefix, tokens], dim=1)
        for layer in model.layers:
            x = layer(x, (model.rope_cos, model.rope_sin))
        full = model._bin_logits(model.norm(x[:, prefix.shape[1] - 1 :]))
    torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-5)
    # Same weights otherwise: the parallel variant differs only by its 7 action queries.
    parallel = {"name": "vla", "config": {"preset": "vla_mini", "llm_layers": 2}}
    assert count_parameters(parallel) - count_parameters(ref) == 7 * 128
