"""Library models a user brings, through the whole service: every zoo architecture (transformers BERT,
Llama, ViT, ResNet, DINOv2, SigLIP) in every export format, uploaded with no evaluation data, optimized
with `balanced_optimization` and a 75% size target, downloaded, and run with the plain runtime
(ONNX Runtime, torch.jit.load, torch.export.load) on the original's inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from evals.zoo import ZOO_FORMATS, ZOO_MODELS, build, export_zoo, run_plain
from state.settings import Settings
from tests.api.session_helpers import wait_terminal
from tests.conftest import MakeUser, UploadModel, make_settings

EXTENSIONS = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}
BODY = {
    "criteria_name": "balanced_optimization",
    "max_size_reduction_percent": 75.0,
    "optimization_techniques": ["quantization", "pruning"],
    # Few timed passes and trials: 18 sessions share two cores; the gate still measures every candidate.
    "benchmark_iterations": 10,
    "benchmark_warmup": 2,
    "max_trials": 5,
}


@pytest.fixture
def db_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only: what these tests vary is the model, not the database (PostgreSQL runs elsewhere)."""
    path = tmp_path / "data" / "robopt.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path.resolve()}"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path / "data", db_url, max_upload_mb=16)


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    directory = tmp_path_factory.mktemp("zoo")
    return {
        (name, fmt): export_zoo(name, fmt, directory / f"{name}-{fmt}")
        for name in ZOO_MODELS
        for fmt in ZOO_FORMATS
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a2, b2 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a2 * b2, 1) / (np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1))))


# Known gap, kept visible: SigLIP traced to TorchScript converts (TS2EPConverter) to a graph whose
# guards refuse a batch of 1, and torch's ONNX exporter refuses the TorchScript module, so no technique
# reaches it; the session completes with every trial failed and each reason stated. Its ONNX and
# .pt2 exports optimize.
KNOWN_GAPS = {("siglip", "torchscript"): "TorchScript SigLIP: neither conversion (torch.export, ONNX) holds"}
CASES = [
    pytest.param(name, fmt, marks=pytest.mark.xfail(reason=KNOWN_GAPS[(name, fmt)], strict=True))
    if (name, fmt) in KNOWN_GAPS
    else pytest.param(name, fmt)
    for name in ZOO_MODELS
    for fmt in ZOO_FORMATS
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fmt"), CASES)
async def test_zoo_model_through_the_service(
    name: str,
    fmt: str,
    zoo_files: dict[tuple[str, str], Path],
    client: httpx.AsyncClient,
    make_user: MakeUser,
    upload_model: UploadModel,
    tmp_path: Path,
) -> None:
    user = await make_user("user")
    path = zoo_files[(name, fmt)]
    r = await upload_model(user, path, name=f"{name} ({fmt})")
    assert r.status_code == 200, r.text
    model = r.json()
    assert model["input_spec"], model["format_details"]

    r = await client.post("/optimize", headers=user, json={"model_id": model["id"], **BODY})
    assert r.status_code == 200, r.text
    status = await wait_terminal(client, user, r.json()["session_id"], timeout_s=400)
    assert status["status"] == "completed", status
    results = (await client.get(f"/sessions/{status['session_id']}/results", headers=user)).json()
    gains = results["performance_improvements"]
    floor = results["optimization_summary"]["criteria"]["target_accuracy_threshold"]
    assert gains["accuracy_retained"]["optimized"] >= floor, results["optimization_summary"]
    # At least what one plain library call gives (torchao int8 weight-only leaves a .pt2 BERT's
    # embedding table in float: 47%); bench/vs_libraries.py compares the picks call by call.
    tried = [(t["calls"], t["status"], t.get("decision"), t.get("error")) for t in results["trials"]]
    assert gains["size_reduction_percent"]["value"] >= 45.0, (results["recipe"], gains, tried)

    # The download keeps the original's format and runs with its inputs in the plain runtime.
    selected = results["selected_version"]
    r = await client.get(selected["download_url"], headers=user)
    assert r.status_code == 200, r.text
    filename = r.headers["content-disposition"].split("filename=")[-1].strip('"')
    downloaded = tmp_path / f"optimized{Path(filename).suffix}"
    downloaded.write_bytes(r.content)
    if selected["artifact_converted"]:
        # Only a technique that needs another runtime converts, and then the results say why.
        assert selected["artifact_note"] and downloaded.suffix == ".onnx", selected
    else:
        assert downloaded.suffix == EXTENSIONS[fmt], (filename, results["recipe"])
    zoo = build(name)
    inputs = zoo.make_inputs(batch=3, seq_len=12)
    reference = run_plain(path, inputs)
    out = run_plain(downloaded, inputs)
    assert out.shape == reference.shape and out.dtype == np.float32
    assert _cosine(out, reference) > 0.9, results["recipe"]
