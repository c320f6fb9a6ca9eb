"""tools.outputs: library models exported as users export them are recognized from their graphs.

The zoo's embedders (BERT mean-pooled, DINOv2 layer-normed CLS, SigLIP attention-pooled) and
classifiers (ViT, ResNet, Llama's LM head) are exported to ONNX, TorchScript and .pt2 with no robopt
metadata; each file's output kind must come out right from what the file itself holds (the
producing operation, layer names, library type names), with the evidence named in the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from evals.zoo import ZooModel, build, export_zoo
from tools.handle import ModelHandle
from tools.outputs import guess_kind, guess_kinds, library_model, output_producers

CASES = [
    ("bert", "onnx", "embedding", "Div"),
    ("bert", "torchscript", "embedding", "aten::div"),
    ("dinov2", "pt2", "embedding", "layer_norm"),
    ("dinov2", "onnx", "embedding", "LayerNormalization"),
    ("siglip", "torchscript", "embedding", "residual"),
    ("vit", "onnx", "logits", "classifier"),
    ("resnet", "torchscript", "logits", "classifier"),
    ("llama", "pt2", "logits", "lm_head"),
]


@pytest.fixture(scope="module")
def zoo() -> dict[str, ZooModel]:
    class _Lazy(dict):
        def __missing__(self, name: str) -> ZooModel:
            self[name] = model = build(name)
            return model

    return _Lazy()


def _load(path: Path, fmt: str) -> ModelHandle:
    if fmt == "onnx":
        return ModelHandle(runtime="onnx", format="onnx", model=onnx.load(str(path)), inputs=[])
    if fmt == "torchscript":
        return ModelHandle(runtime="torch", format="torchscript", model=torch.jit.load(str(path)), inputs=[])
    return ModelHandle(runtime="torch", format="pt2", model=torch.export.load(str(path)).module(), inputs=[])


@pytest.mark.parametrize(("name", "fmt", "kind", "evidence"), CASES, ids=[f"{n}-{f}" for n, f, *_ in CASES])
def test_exported_library_models_are_recognized_from_the_file(
    zoo: dict[str, ZooModel], tmp_path: Path, name: str, fmt: str, kind: str, evidence: str
) -> None:
    model = zoo[name]
    handle = _load(export_zoo(model, fmt, tmp_path), fmt)
    outputs = {"output": model.reference(model.make_inputs(batch=8))}
    guess = guess_kinds(handle, outputs)["output"]
    assert guess.kind == kind == model.output_kind, guess.reason
    assert evidence in guess.reason and not guess.ambiguous
    # The eager module: the transformers class and its config decide.
    eager = ModelHandle(runtime="torch", format="state_dict", model=model.module, inputs=[])
    assert guess_kinds(eager, outputs)["output"].kind == kind
    if fmt != "onnx":  # TorchScript type names and torch.export's module stack name the library class
        lib = library_model(handle)
        assert lib is not None and lib.class_name == model.hf_class


def test_producers_look_through_indexing_and_constant_scaling(tmp_path: Path) -> None:
    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = torch.nn.Linear(6, 7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.classifier(x) / 2.0)[:, :5].reshape(-1, 5)

    model = Scaled().eval()
    path = tmp_path / "scaled.onnx"
    torch.onnx.export(
        model, (torch.zeros(2, 6),), str(path), input_names=["x"], output_names=["y"], dynamo=False
    )
    onnx_handle = _load(path, "onnx")
    assert output_producers(onnx_handle)[0].family == "projection"
    traced = ModelHandle(
        runtime="torch", format="torchscript", model=torch.jit.trace(model, torch.zeros(2, 6)), inputs=[]
    )
    producer = output_producers(traced)[0]
    assert producer.family == "projection" and "classifier" in producer.scope
    y = model(torch.randn(8, 6)).detach().numpy()
    assert guess_kinds(onnx_handle, {"y": y})["y"].kind == "logits"


def test_values_dtype_and_shape_when_there_is_no_structure() -> None:
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(16, 32))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    assert guess_kind("out", unit.astype(np.float32)).kind == "embedding"
    probs = rng.random((16, 10))
    probs /= probs.sum(axis=1, keepdims=True)
    assert guess_kind("out", probs.astype(np.float32)).kind == "logits"
    assert guess_kind("out", rng.integers(0, 9, (16, 7))).kind == "labels"
    assert guess_kind("out", rng.normal(size=(16, 1)).astype(np.float32)).kind == "regression"
    tokens = guess_kind("out", rng.normal(size=(16, 7, 256)).astype(np.float32))
    assert tokens.kind == "action_tokens" and tokens.ambiguous
    plain = guess_kind("out", rng.normal(size=(16, 12)).astype(np.float32))
    assert plain.kind == "logits" and plain.ambiguous and "ambiguous" in plain.reason
    assert guess_kind("image_embeds", rng.normal(size=(16, 12)).astype(np.float32)).kind == "embedding"
