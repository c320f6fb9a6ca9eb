"""Small real models shared by the toolbox tests: a Linear-heavy MLP, a small CNN, and files in every format.

Models are built with fixed seeds; files are written once per test session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tools.handle import InputSpec, ModelHandle

MLP_IN, MLP_HIDDEN, MLP_OUT = 64, 512, 16


class LinearHeavyMLP(nn.Module):
    """~0.3 M parameters, almost all in Linear weights: the case int8 quantization is for."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(MLP_IN, MLP_HIDDEN), nn.ReLU(), nn.Linear(MLP_HIDDEN, MLP_HIDDEN)
        )
        self.act = nn.ReLU()
        self.head = nn.Linear(MLP_HIDDEN, MLP_OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.encoder(x)))


class SmallCNN(nn.Module):
    """A digits-sized (1x8x8) classifier with conv, batch norm and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Linear(16 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build_mlp(seed: int = 0) -> LinearHeavyMLP:
    torch.manual_seed(seed)
    return LinearHeavyMLP().eval()


def build_cnn(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN().eval()
    with torch.no_grad():  # non-trivial running stats so BN folding is exercised
        model.features[1].running_mean.uniform_(-0.1, 0.1)
        model.features[1].running_var.uniform_(0.5, 1.5)
    return model


MLP_INPUTS = [InputSpec(name="obs", shape=[None, MLP_IN])]
CNN_INPUTS = [InputSpec(name="image", shape=[None, 1, 8, 8])]


def mlp_handle(seed: int = 0) -> ModelHandle:
    return ModelHandle(runtime="torch", format="state_dict", model=build_mlp(seed), inputs=list(MLP_INPUTS))


def cnn_handle(seed: int = 0) -> ModelHandle:
    return ModelHandle(runtime="torch", format="state_dict", model=build_cnn(seed), inputs=list(CNN_INPUTS))


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, input_name: str) -> Path:
    torch.onnx.export(
        model, (example,), str(path), input_names=[input_name], output_names=["output"],
        dynamic_axes={input_name: {0: "batch"}, "output": {0: "batch"}}, dynamo=False,
    )  # fmt: skip
    return path


@pytest.fixture
def mlp() -> ModelHandle:
    return mlp_handle()


@pytest.fixture
def cnn() -> ModelHandle:
    return cnn_handle()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The MLP (and CNN) saved in every format the toolbox reads."""
    root = tmp_path_factory.mktemp("model_files")
    mlp_model, cnn_model = build_mlp(), build_cnn()
    x_mlp, x_cnn = torch.randn(2, MLP_IN), torch.randn(2, 1, 8, 8)
    files = {
        "mlp_onnx": export_onnx(mlp_model, x_mlp, root / "mlp.onnx", "obs"),
        "cnn_onnx": export_onnx(cnn_model, x_cnn, root / "cnn.onnx", "image"),
    }
    torch.jit.save(torch.jit.trace(mlp_model, x_mlp), root / "mlp_ts.pt")
    files["mlp_torchscript"] = root / "mlp_ts.pt"
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(mlp_model, (x_mlp,), dynamic_shapes=({0: batch},))
    torch.export.save(program, root / "mlp.pt2")
    files["mlp_pt2"] = root / "mlp.pt2"
    torch.save(mlp_model.state_dict(), root / "mlp_state.pt")
    files["mlp_state_dict"] = root / "mlp_state.pt"
    torch.save(mlp_model.state_dict(), root / "mlp_legacy.pth", _use_new_zipfile_serialization=False)
    files["mlp_state_dict_legacy"] = root / "mlp_legacy.pth"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in mlp_model.state_dict().items()}, str(root / "mlp.safetensors"))
    files["mlp_safetensors"] = root / "mlp.safetensors"
    rng = np.random.default_rng(0)
    np.savez(root / "mlp_eval.npz", obs=rng.standard_normal((32, MLP_IN)).astype(np.float32),
             targets=rng.integers(0, MLP_OUT, 32))  # fmt: skip
    files["mlp_eval_npz"] = root / "mlp_eval.npz"
    return files


def weights_snapshot(handle: ModelHandle) -> dict[str, np.ndarray]:
    """Copies of every weight, to prove a tool left its input untouched."""
    if handle.runtime == "onnx":
        from onnx import numpy_helper

        return {t.name: numpy_helper.to_array(t).copy() for t in handle.model.graph.initializer}
    return {k: v.detach().clone().float().cpu().numpy() for k, v in handle.model.state_dict().items()}


def assert_same_weights(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> None:
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)


# A registered architecture (tools.architectures) with the same widths as the MLP above.
POLICY_REF = {"name": "mlp_policy", "config": {"obs_dim": MLP_IN, "act_dim": MLP_OUT, "hidden": [MLP_HIDDEN]}}


@pytest.fixture(scope="session")
def policy_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """State dicts of `POLICY_REF` (seed 3, so not the architecture's default weights)."""
    from safetensors.torch import save_file

    from tools.architectures import build_model

    root = tmp_path_factory.mktemp("policy_files")
    model = build_model({**POLICY_REF, "config": {**POLICY_REF["config"], "seed": 3}})
    torch.save(model.state_dict(), root / "policy.pt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "policy.safetensors"))
    torch.save(model.half().state_dict(), root / "policy_fp16.pth")
    return {
        "pt": root / "policy.pt",
        "safetensors": root / "policy.safetensors",
        "fp16": root / "policy_fp16.pth",
    }
