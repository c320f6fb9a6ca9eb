"""Upload safety: accepted formats are recognized; unsafe or malformed files are refused with reasons."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
import torch
from onnx import external_data_helper

from tools.errors import InvalidModelError, UnsafeModelError, UnsupportedFormatError
from tools.formats import validate_eval_data, validate_upload

MARKER = "robopt_pwned_marker"


class _RunsSystem:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.target}",))


class _RunsEval:
    def __reduce__(self):  # noqa: ANN204
        return (eval, ("__import__('os').getcwd()",))


# --- accepted formats -------------------------------------------------------------------------


def test_onnx_report(model_files: dict[str, Path]) -> None:
    report = validate_upload(model_files["mlp_onnx"], ".onnx")
    assert report.format == "onnx" and report.loadable
    assert report.opset and report.opset >= 13
    assert report.tensor_count == 6
    assert report.inputs and report.inputs[0].name == "obs" and report.inputs[0].shape == [None, 64]


def test_torch_formats(model_files: dict[str, Path]) -> None:
    sd = validate_upload(model_files["mlp_state_dict"], ".pt")
    assert sd.format == "state_dict" and not sd.is_torchscript and sd.tensor_count == 6
    assert sd.parameter_count == 64 * 512 + 512 + 512 * 512 + 512 + 512 * 16 + 16
    legacy = validate_upload(model_files["mlp_state_dict_legacy"], "pth")
    assert legacy.format == "state_dict" and legacy.details["container"] == "legacy_pickle"
    ts = validate_upload(model_files["mlp_torchscript"], ".pt")
    assert ts.format == "torchscript" and ts.is_torchscript and ts.parameter_count == sd.parameter_count
    pt2 = validate_upload(model_files["mlp_pt2"], ".pt2")
    assert pt2.format == "pt2"
    st = validate_upload(model_files["mlp_safetensors"], ".safetensors")
    assert st.format == "safetensors" and st.tensor_count == 6 and st.parameter_count == sd.parameter_count


def test_state_dict_under_a_key_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, path)
    assert validate_upload(path, ".pt").tensor_count == 1


# --- code in pickles is never executed ------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickle_with_os_system_refused_and_never_run(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / MARKER
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"weight": _RunsSystem(marker)}, protocol=protocol))
    with pytest.raises(UnsafeModelError, match=r"(posix|os|nt)\.system"):
        validate_upload(path, ".pt")
    assert not marker.exists()


def test_torch_zip_with_code_refused(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "payload": _RunsSystem(marker)}, path)
    with pytest.raises(UnsafeModelError, match="system"):
        validate_upload(path, ".pth")
    assert not marker.exists()


def test_legacy_torch_pickle_with_eval_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil_legacy.pt"
    torch.save({"w": torch.zeros(2), "x": _RunsEval()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeModelError, match="builtins.eval"):
        validate_upload(path, ".pt")


def test_plain_pickle_without_tensors_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(InvalidModelError, match="torch.save"):
        validate_upload(path, ".pt")
    path.write_bytes(b"")
    torch.save([1, 2, 3], path)
    with pytest.raises(InvalidModelError, match="no state_dict"):
        validate_upload(path, ".pt")


# --- ONNX external data ----------------------------------------------------------------------


def test_onnx_external_data_refused(model_files: dict[str, Path], tmp_path: Path) -> None:
    model = onnx.load(str(model_files["mlp_onnx"]))
    external_data_helper.convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(UnsafeModelError, match="external"):
        validate_upload(path, ".onnx")


# --- content must match the extension; truncated and random files -----------------------------


def test_content_must_match_extension(model_files: dict[str, Path], tmp_path: Path) -> None:
    zip_as_onnx = tmp_path / "a.onnx"
    zip_as_onnx.write_bytes(model_files["mlp_state_dict"].read_bytes())
    with pytest.raises(InvalidModelError, match="zip archive"):
        validate_upload(zip_as_onnx, ".onnx")
    onnx_as_pt = tmp_path / "b.pt"
    onnx_as_pt.write_bytes(model_files["mlp_onnx"].read_bytes())
    with pytest.raises(InvalidModelError, match="ONNX"):
        validate_upload(onnx_as_pt, ".pt")
    onnx_as_pb = tmp_path / "c.pb"
    onnx_as_pb.write_bytes(model_files["mlp_onnx"].read_bytes())
    with pytest.raises(InvalidModelError, match="ONNX"):
        validate_upload(onnx_as_pb, ".pb")
    pt2_as_pt = tmp_path / "d.pt"
    pt2_as_pt.write_bytes(model_files["mlp_pt2"].read_bytes())
    with pytest.raises(InvalidModelError, match=".pt2"):
        validate_upload(pt2_as_pt, ".pt")


@pytest.mark.parametrize("ext", [".onnx", ".pt", ".pt2", ".safetensors", ".h5", ".pb"])
def test_random_bytes_refused(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"random{ext}"
    # Bytes that are no format's magic and not a well-formed protobuf (field 0 / wire type 7).
    path.write_bytes(b"\x07\xff" + np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InvalidModelError):
        validate_upload(path, ext)


@pytest.mark.parametrize(
    ("key", "ext"),
    [("mlp_onnx", ".onnx"), ("mlp_state_dict", ".pt"), ("mlp_state_dict_legacy", ".pth"),
     ("mlp_torchscript", ".pt"), ("mlp_pt2", ".pt2"), ("mlp_safetensors", ".safetensors")],
)  # fmt: skip
def test_truncated_files_refused(model_files: dict[str, Path], tmp_path: Path, key: str, ext: str) -> None:
    data = model_files[key].read_bytes()
    path = tmp_path / f"cut{ext}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError) as info:
        validate_upload(path, ext)
    assert str(info.value)


def test_empty_and_unknown_extension(tmp_path: Path) -> None:
    empty = tmp_path / "e.onnx"
    empty.write_bytes(b"")
    with pytest.raises(InvalidModelError, match="empty"):
        validate_upload(empty, ".onnx")
    with pytest.raises(UnsupportedFormatError, match=".exe"):
        validate_upload(empty, ".exe")


# --- safetensors header ---------------------------------------------------------------------


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    ("header", "data", "reason"),
    [
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 12, "needs 16"),
        ({"w": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "unknown dtype"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 16, "data section"),
    ],
)
def test_safetensors_header_checked(tmp_path: Path, header: dict, data: bytes, reason: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_safetensors_bytes(header, data))
    with pytest.raises(InvalidModelError, match=reason):
        validate_upload(path, ".safetensors")


def test_safetensors_header_length_beyond_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(InvalidModelError, match="truncated"):
        validate_upload(path, ".safetensors")


# --- Keras h5 and TensorFlow pb --------------------------------------------------------------


def _keras_h5(path: Path, layers: list[dict]) -> Path:
    config = {"class_name": "Sequential", "config": {"name": "seq", "layers": layers}}
    with h5py.File(path, "w") as h5:
        h5.attrs["model_config"] = json.dumps(config)
        h5.attrs["keras_version"] = "2.15.0"
        h5.create_dataset("model_weights/dense/kernel", data=np.zeros((4, 2), np.float32))
    return path


def test_keras_h5_inspected_not_loadable(tmp_path: Path) -> None:
    path = _keras_h5(tmp_path / "m.h5", [{"class_name": "Dense", "config": {"name": "dense", "units": 2}}])
    report = validate_upload(path, ".h5")
    assert report.format == "keras_h5" and not report.loadable
    assert report.parameter_count == 8 and report.details["layers"] == 1
    assert "tf2onnx" in report.details["conversion"]


def test_keras_lambda_refused(tmp_path: Path) -> None:
    layers = [{"class_name": "Lambda", "config": {"name": "sneaky", "function": ["4wEAAAAA", None, None]}}]
    with pytest.raises(UnsafeModelError, match="sneaky"):
        validate_upload(_keras_h5(tmp_path / "l.h5", layers), ".h5")


def test_pb_protobuf_checked(tmp_path: Path) -> None:
    # A GraphDef-like message: field 1 (node), length-delimited, holding field 1 (name) "x".
    good = tmp_path / "g.pb"
    good.write_bytes(bytes([0x0A, 0x03, 0x0A, 0x01, ord("x")]))
    report = validate_upload(good, ".pb")
    assert (
        report.format == "tensorflow_pb" and not report.loadable and report.details["top_level_fields"] == 1
    )
    cut = tmp_path / "cut.pb"
    cut.write_bytes(bytes([0x0A, 0x09, 0x0A]))
    with pytest.raises(InvalidModelError, match="truncated"):
        validate_upload(cut, ".pb")


# --- evaluation data ---------------------------------------------------------------------------


def test_eval_data_npz_and_safetensors(model_files: dict[str, Path], tmp_path: Path) -> None:
    data = validate_eval_data(model_files["mlp_eval_npz"], ".npz")
    assert list(data.inputs) == ["obs"] and data.num_samples == 32 and data.targets is not None
    from safetensors.numpy import save_file

    path = tmp_path / "d.safetensors"
    save_file({"obs": np.ones((5, 64), np.float32)}, str(path))
    data = validate_eval_data(path, "safetensors")
    assert data.targets is None and data.inputs["obs"].shape == (5, 64)


def test_eval_data_refusals(tmp_path: Path) -> None:
    objects = tmp_path / "o.npz"
    np.savez(objects, obs=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UnsafeModelError, match="pickle"):
        validate_eval_data(objects, ".npz")
    strings = tmp_path / "s.npz"
    np.savez(strings, obs=np.array(["a", "b"]))
    with pytest.raises(InvalidModelError, match="numeric"):
        validate_eval_data(strings, ".npz")
    ragged = tmp_path / "r.npz"
    np.savez(ragged, obs=np.zeros((4, 2)), targets=np.zeros(3))
    with pytest.raises(InvalidModelError, match="number of samples"):
        validate_eval_data(ragged, ".npz")
    only_targets = tmp_path / "t.npz"
    np.savez(only_targets, targets=np.zeros(3))
    with pytest.raises(InvalidModelError, match="no input"):
        validate_eval_data(only_targets, ".npz")
    with pytest.raises(UnsupportedFormatError):
        validate_eval_data(objects, ".csv")
