"""OpenVLA's checkpoint layout onto the `vla` architecture, on a synthetic checkpoint at a small width."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.tools.openvla_checkpoint import (
    RAN_MARKER,
    Sizes,
    openvla_config,
    random_weights,
    reference_action_logits,
    write_openvla_checkpoint,
)
from tools.architectures import build_model, count_parameters, resolve
from tools.errors import InvalidModelError, UnsupportedFormatError
from tools.openvla_layout import (
    is_openvla_config,
    load_openvla_directory,
    openvla_architecture_ref,
    remap_openvla_state_dict,
)


def _inputs(batch: int = 2, *, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 6, 28, 28, generator=g)  # DINO and SigLIP images, channel-stacked
    input_ids = torch.randint(0, 31744, (batch, 32), generator=g)
    input_ids[:, 0] = 1  # BOS
    return pixel_values, input_ids


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    directory = tmp_path_factory.mktemp("openvla")
    return directory, write_openvla_checkpoint(directory)


def test_is_openvla_config() -> None:
    assert is_openvla_config(openvla_config())
    assert is_openvla_config({"architectures": ["OpenVLAForActionPrediction"]})
    assert not is_openvla_config({"model_type": "bert", "architectures": ["BertModel"]})
    assert not is_openvla_config({"model_type": "prismatic"})
    assert not is_openvla_config(["model_type", "openvla"])


def test_loaded_model_equals_openvla_forward(checkpoint: tuple[Path, dict[str, torch.Tensor]]) -> None:
    directory, weights = checkpoint
    config = json.loads((directory / "config.json").read_text())
    model, ref = load_openvla_directory(directory, config, "cpu")
    assert not (directory / RAN_MARKER).exists()  # the auto_map's code never ran

    pixel_values, input_ids = _inputs()
    full, tokens = reference_action_logits(weights, config, pixel_values, input_ids)
    with torch.no_grad():
        ours = model(pixel_values[:, :3], pixel_values[:, 3:], input_ids)
    # Action bins: the 256 ids below 32000 (the tokenizer's end; 64 padding rows above), bin 0 highest.
    expected = full[..., 32000 - 256 : 32000].flip(-1)
    assert ours.shape == (2, 7, 256)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    # Random weights mostly pick non-action tokens: greedy over the whole vocabulary, as OpenVLA's
    # generate does, is what keeps every later step equal.
    assert bool(((tokens < 31744) | (tokens >= 32000)).any())


def test_keys_shapes_and_outputs_equal_the_directly_built_model(
    checkpoint: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    directory, weights = checkpoint
    config = json.loads((directory / "config.json").read_text())
    model, ref = load_openvla_directory(directory, config, "cpu")
    direct = build_model(ref)
    loaded = model.state_dict()
    assert {k: tuple(v.shape) for k, v in loaded.items()} == {
        k: tuple(v.shape) for k, v in direct.state_dict().items()
    }
    direct.load_state_dict(remap_openvla_state_dict(weights, ref))
    pixel_values, input_ids = _inputs(seed=3)
    with torch.no_grad():
        a = model(pixel_values[:, :3], pixel_values[:, 3:], input_ids)
        b = direct(pixel_values[:, :3], pixel_values[:, 3:], input_ids)
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    # q/k/v are the rows of timm's fused qkv in that order; LayerScale's scale_factor is ls1.
    qkv = weights["vision_backbone.featurizer.blocks.1.attn.qkv.weight"]
    assert torch.equal(loaded["vision_dino.blocks.1.attn.k_proj.weight"], qkv[32:64])
    assert torch.equal(
        loaded["vision_dino.blocks.0.ls1"], weights["vision_backbone.featurizer.blocks.0.ls1.scale_factor"]
    )
    assert torch.equal(
        loaded["layers.1.mlp.up_proj.weight"], weights["language_model.model.layers.1.mlp.up_proj.weight"]
    )


def test_derived_config_reads_the_checkpoint(checkpoint: tuple[Path, dict[str, torch.Tensor]]) -> None:
    directory, _ = checkpoint
    config = json.loads((directory / "config.json").read_text())
    _, ref = load_openvla_directory(directory, config, "cpu")
    cfg = ref.config
    assert (cfg["dino"]["width"], cfg["siglip"]["width"]) == (32, 48)
    # depth 3 in the checkpoint: OpenVLA reads block 1's output, so two blocks, no final norm
    assert cfg["dino"]["depth"] == cfg["siglip"]["depth"] == 2
    assert not cfg["dino"]["final_norm"] and not cfg["dino"]["pos_embed_prefix"]
    assert (
        cfg["dino"]["num_registers"] == 4 and cfg["dino"]["class_token"] and not cfg["siglip"]["class_token"]
    )
    assert (cfg["llm_dim"], cfg["llm_layers"], cfg["llm_heads"], cfg["llm_ffn"]) == (64, 2, 4, 96)
    assert cfg["norm_eps"] == 1e-6  # LlamaConfig's default, since text_config leaves it out
    assert cfg["action_token_end"] == 32000 and cfg["action_dims"] == 7
    assert cfg["projector_hidden"] == 4 * 80


def test_bf16_checkpoint_stays_bf16(tmp_path: Path) -> None:
    weights = write_openvla_checkpoint(tmp_path, dtype=torch.bfloat16)
    config = openvla_config()
    model, _ = load_openvla_directory(tmp_path, config, "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    pixel_values, input_ids = _inputs(batch=1)
    with torch.no_grad():
        ours = model(pixel_values[:, :3].bfloat16(), pixel_values[:, 3:].bfloat16(), input_ids).float()
    full, _ = reference_action_logits(weights, config, pixel_values, input_ids)
    expected = full[..., 32000 - 256 : 32000].flip(-1)
    # bf16 against the float32 reference on the prefill step (later steps may pick other tokens)
    cos = torch.nn.functional.cosine_similarity(ours[:, 0], expected[:, 0]).item()
    assert cos > 0.99


def test_openvla_7b_config_maps_onto_the_preset_widths() -> None:
    """The published OpenVLA-7B config.json (text_config holds only vocab_size) gives the 7B shape."""
    config = openvla_config()
    config["image_sizes"] = [224, 224]
    config["text_config"] = {
        "model_type": "llama",
        "pad_token_id": 32000,
        "torch_dtype": "bfloat16",
        "vocab_size": 32064,
    }
    ref = openvla_architecture_ref(config)
    _, preset = resolve("openvla_7b")
    cfg = ref.config
    for field in ("llm_dim", "llm_layers", "llm_heads", "llm_ffn", "vocab_size", "projector_hidden"):
        assert cfg[field] == getattr(preset, field), field
    for enc in ("dino", "siglip"):
        ours, theirs = cfg[enc], getattr(preset, enc)
        for field in (
            "image_size",
            "patch_size",
            "width",
            "heads",
            "mlp_dim",
            "num_registers",
            "class_token",
        ):
            assert ours[field] == getattr(theirs, field), (enc, field)
        assert ours["depth"] == theirs.depth - 1  # the featurizers' last block never runs in OpenVLA
    # OpenVLA-7B is 7.54 B parameters; the skipped last blocks, final norms and SigLIP's pool head
    # hold about 43 M of them.
    n = count_parameters(ref)
    assert 7.45e9 < n < 7.54e9


def test_unknown_weight_is_refused(tmp_path: Path) -> None:
    weights = random_weights()
    weights["vision_backbone.featurizer.blocks.0.attn.q_norm.weight"] = torch.ones(2)
    write_openvla_checkpoint(tmp_path, weights)
    with pytest.raises(InvalidModelError, match="outside its layout.*q_norm"):
        load_openvla_directory(tmp_path, openvla_config(), "cpu")


def test_missing_weight_is_refused(tmp_path: Path) -> None:
    weights = random_weights()
    del weights["projector.fc2.bias"]
    write_openvla_checkpoint(tmp_path, weights)
    with pytest.raises(InvalidModelError, match="lacks 1 weight.*projector.fc2.bias"):
        load_openvla_directory(tmp_path, openvla_config(), "cpu")


def test_weights_that_contradict_the_config_are_refused(tmp_path: Path) -> None:
    write_openvla_checkpoint(tmp_path)
    config = openvla_config()
    config["text_config"]["intermediate_size"] = 128  # the checkpoint's MLP is 96 wide
    with pytest.raises(InvalidModelError, match="do not fit"):
        load_openvla_directory(tmp_path, config, "cpu")


def test_shard_outside_the_directory_is_refused(tmp_path: Path) -> None:
    write_openvla_checkpoint(tmp_path / "m")
    index = tmp_path / "m" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    save_file({"x": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))
    data["weight_map"]["projector.fc1.bias"] = "../outside.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(InvalidModelError, match="not a file of the directory"):
        load_openvla_directory(tmp_path / "m", openvla_config(), "cpu")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vision_backbone_id": "siglip-vit-so400m"}, "vision backbone 'siglip-vit-so400m'"),
        ({"llm_backbone_id": "mistral-v0.1-7b-pure"}, "language model 'mistral-v0.1-7b-pure'"),
        ({"timm_override_act_layers": ["quick_gelu", None]}, "activation overrides"),
        ({"text_config": {"num_key_value_heads": 2, "num_attention_heads": 4}}, "grouped-query"),
        ({"text_config": {"rope_scaling": {"type": "linear", "factor": 2.0}}}, "rope_scaling"),
    ],
)
def test_variants_that_do_not_map_exactly_are_refused(change: dict, message: str) -> None:
    config = openvla_config()
    for key, value in change.items():
        config[key] = {**config[key], **value} if key == "text_config" else value
    with pytest.raises(UnsupportedFormatError, match=message):
        openvla_architecture_ref(config)


def test_not_an_openvla_config_is_refused() -> None:
    with pytest.raises(InvalidModelError, match="not an OpenVLA config"):
        openvla_architecture_ref({"model_type": "llama"})


def test_openvla_directory_through_the_toolbox(
    checkpoint: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    """load_model builds it as the vla architecture; an optimized version downloads as TorchScript and
    says why it is not an OpenVLA directory."""
    from agents.workspace import ARTIFACT_INFO, Workspace
    from tools import load_model, quantize

    directory, _ = checkpoint
    handle = load_model(directory)
    assert handle.format == "hf_directory" and handle.architecture is not None
    assert handle.architecture.name == "vla" and [s.name for s in handle.inputs] == [
        "images_a",
        "images_b",
        "instruction_ids",
    ]
    path, fmt = Workspace(original=handle, artifacts_dir=tmp_path).save(
        "v1", quantize(handle, "dynamic_int8")
    )
    info = json.loads((Path(path).parent / ARTIFACT_INFO).read_text())
    assert fmt == "torchscript" and info["converted"] and "OpenVLA's own layout" in info["note"]
    assert not (directory / RAN_MARKER).exists()


def test_existing_vla_defaults_are_unchanged() -> None:
    _, cfg = resolve("vla_mini")
    assert cfg.dino.pos_embed_prefix and cfg.dino.final_norm
    assert cfg.text_before_image == 0 and cfg.action_tokens_end == cfg.vocab_size
    assert not cfg.action_tokens_descending and cfg.greedy_over == "action_bins"
    assert Sizes().vocab - 64 == 32000
