"""Hugging Face transformers directories: validated as data, refused when they need code, built by
transformers from their config, and run through the toolbox (quantize, prune, evaluate)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.hf_directories import IMAGE_SIZE, TEXT_VOCAB, edit_json, save_bert, save_vit
from tools import evaluate, inspect_model, load_model, prune, quantize
from tools.errors import InvalidModelError, UnsafeModelError
from tools.formats import validate_upload
from tools.model_dirs import inspect_directory, transformers_model
from tools.runtime import output_values, synthesize_inputs


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bert(tmp_path_factory.mktemp("bert") / "bert")


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_vit(tmp_path_factory.mktemp("vit") / "vit", shard_kb=100)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def _reference(directory: Path) -> Any:
    import transformers

    config = json.loads((directory / "config.json").read_text())
    cls = getattr(transformers, config["architectures"][0])
    return cls.from_pretrained(directory).eval()


# ---------------------------------------------------------------------------------------------
# what loads, and how it is described


def test_text_encoder_directory_loads_with_its_signature(bert_dir: Path) -> None:
    report = validate_upload(bert_dir, ".zip")
    assert report.format == "hf_directory" and report.loadable
    assert report.details["model_class"] == "BertModel" and report.details["weights"] == "safetensors"
    assert report.parameter_count == sum(p.numel() for p in _reference(bert_dir).parameters())

    handle = load_model(bert_dir)
    assert handle.format == "hf_directory" and handle.runtime == "torch"
    assert [s.model_dump() for s in handle.inputs] == [
        {"name": "input_ids", "shape": [None, None], "dtype": "int64", "low": 0.0, "high": float(TEXT_VOCAB)},
        {"name": "attention_mask", "shape": [None, None], "dtype": "int64", "low": 1.0, "high": 2.0},
    ]
    assert handle.metadata["signature_source"] == "config"
    assert type(transformers_model(handle.model)).__name__ == "BertModel"

    inputs = synthesize_inputs(handle.inputs, batch_size=3, seed=1)
    outputs = output_values(handle, inputs)
    assert list(outputs) == ["last_hidden_state", "pooler_output"]
    with torch.no_grad():
        want = _reference(bert_dir)(
            input_ids=torch.from_numpy(inputs["input_ids"]),
            attention_mask=torch.from_numpy(inputs["attention_mask"]),
        )
    np.testing.assert_allclose(outputs["last_hidden_state"], want.last_hidden_state.numpy(), atol=1e-5)
    assert inputs["input_ids"].max() < TEXT_VOCAB


def test_sharded_vision_directory_loads_with_its_signature(vit_dir: Path) -> None:
    layout = inspect_directory(vit_dir)
    assert layout.weights == "safetensors_sharded" and len(layout.weight_files) > 1
    handle = load_model(vit_dir)
    assert [s.model_dump() for s in handle.inputs] == [
        {
            "name": "pixel_values",
            "shape": [None, 3, IMAGE_SIZE, IMAGE_SIZE],
            "dtype": "float32",
            "low": 0.0,
            "high": 1.0,
        }
    ]
    inputs = synthesize_inputs(handle.inputs, batch_size=2)
    logits = output_values(handle, inputs)["logits"]
    with torch.no_grad():
        want = _reference(vit_dir)(pixel_values=torch.from_numpy(inputs["pixel_values"])).logits
    np.testing.assert_allclose(logits, want.numpy(), atol=1e-5)


def test_image_processor_config_gives_the_pixel_range(vit_dir: Path, tmp_path: Path) -> None:
    directory = _copy(vit_dir, tmp_path / "vit")
    (directory / "preprocessor_config.json").write_text(
        json.dumps({"do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    )
    spec = load_model(directory).inputs[0]
    assert (spec.low, spec.high) == (-1.0, 1.0)


def test_short_position_tables_fix_the_sequence_length(tmp_path: Path) -> None:
    from transformers import BertModel

    from tests.hf_directories import bert_config

    BertModel(bert_config(max_position_embeddings=8)).save_pretrained(tmp_path / "short")
    assert [s.shape for s in load_model(tmp_path / "short").inputs] == [[None, 8], [None, 8]]


def test_pickled_weights_load_after_the_scan(bert_dir: Path, tmp_path: Path) -> None:
    """pytorch_model.bin, single and sharded with its index: scanned, then weights_only."""
    state = {k: v.contiguous() for k, v in _reference(bert_dir).state_dict().items()}
    single = tmp_path / "single"
    single.mkdir()
    (single / "config.json").write_bytes((bert_dir / "config.json").read_bytes())
    torch.save(state, single / "pytorch_model.bin")
    assert inspect_directory(single).weights == "pytorch_bin"

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_bytes((bert_dir / "config.json").read_bytes())
    names = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for shard, keys in halves.items():
        torch.save({k: state[k] for k in keys}, sharded / shard)
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    (sharded / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    assert inspect_directory(sharded).weights == "pytorch_bin_sharded"

    inputs = synthesize_inputs(load_model(bert_dir).inputs, batch_size=2)
    want = output_values(load_model(bert_dir), inputs)["last_hidden_state"]
    for directory in (single, sharded):
        got = output_values(load_model(directory), inputs)["last_hidden_state"]
        np.testing.assert_allclose(got, want, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# models that need code


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"auto_map": {"AutoModel": "modeling_evil.EvilModel"}},
            r"asks for the model's own code \(auto_map\)",
        ),
        ({"trust_remote_code": True}, "trust_remote_code"),
        (
            {"architectures": ["EvilModelForEverything"]},
            "'EvilModelForEverything', which transformers does not provide",
        ),
        ({"architectures": ["__import__"]}, "which transformers does not provide"),
        (
            {"architectures": None, "model_type": "evil-net"},
            "model_type 'evil-net' is not one transformers provides",
        ),
    ],
)
def test_configs_that_need_remote_code_are_refused(
    bert_dir: Path, tmp_path: Path, change: dict[str, Any], match: str
) -> None:
    directory = _copy(bert_dir, tmp_path / "m")
    marker = tmp_path / "ran"
    (directory / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    edit_json(directory / "config.json", **change)
    with pytest.raises(UnsafeModelError, match=match) as err:
        load_model(directory)
    assert "never runs" in err.value.message
    assert not marker.exists()


def test_architecture_class_must_match_the_model_type(bert_dir: Path, tmp_path: Path) -> None:
    directory = _copy(bert_dir, tmp_path / "m")
    edit_json(directory / "config.json", architectures=["ViTModel"])
    with pytest.raises(InvalidModelError, match="model_type 'bert' is not the type of its class ViTModel"):
        validate_upload(directory, "")


def test_weights_of_another_class_are_refused(bert_dir: Path, tmp_path: Path) -> None:
    """BertModel weights under a config naming BertForSequenceClassification: its head would be random."""
    directory = _copy(bert_dir, tmp_path / "m")
    edit_json(directory / "config.json", architectures=["BertForSequenceClassification"])
    with pytest.raises(
        InvalidModelError, match="do not fit config.json's class BertForSequenceClassification: missing"
    ):
        load_model(directory)


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.mark.parametrize("container", ["torch_zip", "plain_pickle"])
def test_pickled_weights_whose_payload_would_run_are_refused(
    bert_dir: Path, tmp_path: Path, container: str
) -> None:
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "config.json").write_bytes((bert_dir / "config.json").read_bytes())
    marker = tmp_path / "payload_ran"
    weights = directory / "pytorch_model.bin"
    if container == "torch_zip":
        torch.save({"embeddings.word_embeddings.weight": torch.zeros(2, 2), "x": _Payload(marker)}, weights)
        load = f"import torch; torch.load({str(weights)!r}, weights_only=False)"
    else:
        weights.write_bytes(pickle.dumps({"w": [0.0], "x": _Payload(marker)}, protocol=4))
        load = f"import pickle; pickle.load(open({str(weights)!r}, 'rb'))"

    # The payload is real: unpickled the plain way, in another process, it runs.
    subprocess.run([sys.executable, "-c", load], check=True, timeout=120)
    assert marker.read_text() == "ran"
    marker.unlink()

    with pytest.raises(UnsafeModelError, match=r"pytorch_model\.bin.* needs code to load .* builtins\.exec"):
        validate_upload(directory, ".zip")
    with pytest.raises(UnsafeModelError):
        load_model(directory)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# broken directories


def _sharded(vit_dir: Path, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    directory = _copy(vit_dir, tmp_path / "m")
    return directory, json.loads((directory / "model.safetensors.index.json").read_text())


def _write_index(directory: Path, index: dict[str, Any]) -> None:
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


def test_index_naming_a_missing_shard_is_refused(vit_dir: Path, tmp_path: Path) -> None:
    directory, index = _sharded(vit_dir, tmp_path)
    shard = sorted(set(index["weight_map"].values()))[-1]
    (directory / shard).unlink()
    with pytest.raises(InvalidModelError, match=f"names shard\\(s\\) that are not in the directory: {shard}"):
        validate_upload(directory, "")


def test_tensor_not_where_the_index_says_is_refused(vit_dir: Path, tmp_path: Path) -> None:
    directory, index = _sharded(vit_dir, tmp_path)
    shards = sorted(set(index["weight_map"].values()))
    name = next(k for k, v in index["weight_map"].items() if v == shards[0])
    index["weight_map"][name] = shards[1]
    _write_index(directory, index)
    with pytest.raises(
        InvalidModelError,
        match=f"puts tensor '{name}' in {shards[1]}, which does not hold it; it is in {shards[0]}",
    ):
        validate_upload(directory, "")


def test_tensor_no_shard_holds_is_refused(vit_dir: Path, tmp_path: Path) -> None:
    directory, index = _sharded(vit_dir, tmp_path)
    index["weight_map"]["vit.extra.weight"] = next(iter(index["weight_map"].values()))
    _write_index(directory, index)
    with pytest.raises(InvalidModelError, match="'vit.extra.weight' .* no shard holds it"):
        validate_upload(directory, "")


def test_shard_tensors_the_index_does_not_list_are_refused(vit_dir: Path, tmp_path: Path) -> None:
    directory, index = _sharded(vit_dir, tmp_path)
    dropped = sorted(index["weight_map"])[0]
    del index["weight_map"][dropped]
    _write_index(directory, index)
    with pytest.raises(
        InvalidModelError, match=f"holds tensor\\(s\\) model.safetensors.index.json does not list: {dropped}"
    ):
        validate_upload(directory, "")


def test_index_without_metadata_is_refused_now(vit_dir: Path, tmp_path: Path) -> None:
    directory, index = _sharded(vit_dir, tmp_path)
    del index["metadata"]
    _write_index(directory, index)
    with pytest.raises(InvalidModelError, match="has no 'metadata' object"):
        validate_upload(directory, "")


def test_extra_shard_is_refused(vit_dir: Path, tmp_path: Path) -> None:
    directory, index = _sharded(vit_dir, tmp_path)
    first = sorted(set(index["weight_map"].values()))[0]
    (directory / "model-00009-of-00009.safetensors").write_bytes((directory / first).read_bytes())
    with pytest.raises(
        InvalidModelError, match="shard\\(s\\) that model.safetensors.index.json does not name: model-00009"
    ):
        validate_upload(directory, "")


@pytest.mark.parametrize("sharded", [False, True])
def test_truncated_safetensors_are_refused(
    bert_dir: Path, vit_dir: Path, tmp_path: Path, sharded: bool
) -> None:
    directory = _copy(vit_dir if sharded else bert_dir, tmp_path / "m")
    name = sorted(p.name for p in directory.glob("*.safetensors"))[0]
    data = (directory / name).read_bytes()
    (directory / name).write_bytes(data[: len(data) - 100])
    with pytest.raises(InvalidModelError, match=f"{name}: .*truncated"):
        validate_upload(directory, "")


def test_symlink_inside_a_directory_is_refused(bert_dir: Path, tmp_path: Path) -> None:
    directory = _copy(bert_dir, tmp_path / "m")
    (directory / "tokenizer.json").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeModelError, match="'tokenizer.json' in the model directory is a symbolic link"):
        validate_upload(directory, "")


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        ("no_config", "no config.json at its top"),
        ("nested_config", r"found inner/config\.json"),
        ("config_list", "config.json is not a JSON object"),
        ("config_not_json", "config.json is not valid JSON"),
        ("no_model_type", "no 'model_type'"),
        ("no_weights", "holds no weights"),
        ("both_layouts", "both model.safetensors and a sharded"),
        ("adapter", "PEFT adapter"),
    ],
)
def test_malformed_directories_are_refused(bert_dir: Path, tmp_path: Path, setup: str, match: str) -> None:
    directory = _copy(bert_dir, tmp_path / "m")
    config = directory / "config.json"
    if setup == "no_config":
        config.unlink()
    elif setup == "nested_config":
        (directory / "inner").mkdir()
        config.rename(directory / "inner" / "config.json")
    elif setup == "config_list":
        config.write_text("[1, 2]")
    elif setup == "config_not_json":
        config.write_text("{'model_type': 'bert'")
    elif setup == "no_model_type":
        edit_json(config, model_type="")
    elif setup == "no_weights":
        (directory / "model.safetensors").unlink()
    elif setup == "both_layouts":
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": {}})
        )
    else:
        (directory / "adapter_config.json").write_text("{}")
    with pytest.raises(InvalidModelError, match=match):
        validate_upload(directory, "")


def test_side_files_are_kept_and_never_run(bert_dir: Path, tmp_path: Path) -> None:
    directory = _copy(bert_dir, tmp_path / "m")
    marker = tmp_path / "ran"
    (directory / "norm_stats.json").write_text(json.dumps({"bridge": {"mean": [0.0] * 7}}))
    (directory / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": "tok.Tok"}}))
    (directory / "tok.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    report = validate_upload(directory, "")
    assert set(report.details["other_files"]) == {"norm_stats.json", "tokenizer_config.json", "tok.py"}
    assert any("never imported" in n for n in report.details["notes"])
    load_model(directory)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# the toolbox on directory models


@pytest.mark.parametrize("which", ["bert", "vit"])
def test_quantize_prune_and_evaluate_a_directory_model(bert_dir: Path, vit_dir: Path, which: str) -> None:
    handle = load_model(bert_dir if which == "bert" else vit_dir)
    profile = inspect_model(handle)
    assert profile.format == "hf_directory" and profile.flops and profile.quantizable_layers
    int8 = quantize(handle, "dynamic_int8")
    result = evaluate(int8, reference=handle)
    assert result.accuracy_retained > 0.9, result
    assert [o.name for o in result.outputs] == (
        ["last_hidden_state", "pooler_output"] if which == "bert" else ["logits"]
    )
    assert {o.output_kind for o in result.outputs} == ({"embedding"} if which == "bert" else {"logits"})
    pruned = prune(handle, "magnitude", 0.2)
    assert evaluate(pruned, reference=handle).accuracy_retained > 0.5
    assert inspect_model(pruned).zero_fraction > 0.1
    assert inspect_model(handle).zero_fraction < 0.01  # the original is untouched


def test_openvla_checkpoint_is_built_as_our_vla_without_its_code(tmp_path: Path) -> None:
    from tests.tools.openvla_checkpoint import RAN_MARKER, write_openvla_checkpoint

    directory = tmp_path / "openvla"
    write_openvla_checkpoint(directory)
    report = validate_upload(directory, ".tar.gz")
    assert report.details["layout"] == "openvla" and report.details["model_class"] is None
    handle = load_model(directory)
    assert handle.architecture is not None and handle.architecture.name == "vla"
    assert handle.inputs and handle.metadata["signature_source"] in ("config", "architecture")
    assert not (directory / RAN_MARKER).exists()
