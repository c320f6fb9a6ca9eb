"""Small model and data files for the upload tests, each built in milliseconds."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

MLP_ARCH = {"name": "mlp_policy", "config": {"obs_dim": 4, "act_dim": 2, "hidden": [8]}}


def onnx_model(path: Path) -> Path:
    """obs [batch, 4] -> Gemm -> [batch, 2]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2) / 8, name="W")
    b = numpy_helper.from_array(np.zeros(2, dtype=np.float32), name="B")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["obs", "W", "B"], ["act"])],
        "tiny",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("act", TensorProto.FLOAT, ["batch", 2])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def onnx_with_external_data(path: Path, location: str = "../../../etc/passwd") -> Path:
    """An initializer whose bytes would be read from `location` on the server."""
    import onnx
    from onnx import TensorProto

    onnx_model(path)
    model = onnx.load(str(path))
    w = model.graph.initializer[0]
    w.ClearField("float_data")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "32")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    path.write_bytes(model.SerializeToString())
    return path


def torchscript_model(path: Path) -> Path:
    import torch

    class Policy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.fc(obs)

    torch.jit.save(torch.jit.script(Policy()), str(path))
    return path


def mlp_state_dict(path: Path) -> Path:
    import torch

    from tools.architectures import build_model
    from tools.handle import ArchitectureRef

    torch.manual_seed(0)
    model = build_model(ArchitectureRef.model_validate(MLP_ARCH))
    torch.save(model.state_dict(), str(path))
    return path


def safetensors_weights(path: Path) -> Path:
    from safetensors.numpy import save_file

    save_file(
        {"fc.weight": np.ones((2, 4), dtype=np.float32), "fc.bias": np.zeros(2, dtype=np.float32)}, str(path)
    )
    return path


class _CreatesFile:
    """Unpickling this would run `os.system("touch <marker>")`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def malicious_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"weights": _CreatesFile(marker)}, protocol=2))
    return path


def malicious_torch_zip(path: Path, marker: Path) -> Path:
    """A torch.save archive whose data.pkl calls os.system when loaded without weights_only."""
    import torch

    torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": _CreatesFile(marker)}, str(path))
    return path


def keras_h5(path: Path, with_lambda: bool) -> Path:
    import h5py

    layers: list[dict[str, Any]] = [{"class_name": "Dense", "config": {"name": "dense", "units": 2}}]
    if with_lambda:
        layers.append(
            {"class_name": "Lambda", "config": {"name": "evil", "function": ["4wEAAAAAAAAA", None, None]}}
        )
    config = {"class_name": "Sequential", "config": {"name": "seq", "layers": layers}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.15.0"
        f.create_group("model_weights")
    return path


def tensorflow_pb(path: Path) -> Path:
    """A GraphDef with one Const node, hand-encoded as protobuf."""
    node = b"\x0a\x01x" + b"\x12\x05Const"
    path.write_bytes(b"\x0a" + bytes([len(node)]) + node)
    return path


def truncated(source: Path, path: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def zip_archive(path: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "not a model")
    path.write_bytes(buf.getvalue())
    return path


def eval_npz(
    path: Path, names: tuple[str, ...] = ("obs",), n: int = 8, dim: int = 4, targets: bool = True
) -> Path:
    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal((n, dim)).astype(np.float32) for name in names}
    if targets:
        arrays["targets"] = rng.standard_normal((n, 2)).astype(np.float32)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def eval_npz_with_objects(path: Path) -> Path:
    np.savez(path, obs=np.array([{"a": 1}, None], dtype=object))
    return path
