"""Input signatures through the API: read off the file, given at upload or /optimize, defined by
evaluation data; refused at request time when they contradict the graph or cannot be had."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from evals.zoo import run_plain
from state.settings import Settings
from tests.api.session_helpers import wait_terminal
from tests.conftest import MakeUser, UploadModel, make_settings

# The specification's own example body.
SPEC_BODY = {
    "criteria_name": "balanced_optimization",
    "target_accuracy_threshold": 0.95,
    "max_size_reduction_percent": 50.0,
    "optimization_techniques": ["quantization", "pruning"],
}


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    """Uploads of a few MB: the policies here are the size users' are."""
    return make_settings(tmp_path / "data", db_url, max_upload_mb=16)


def traced_policy(path: Path) -> Path:
    """A user's traced TorchScript MLP policy: obs [batch, 64] -> 8 actions; no signature stored."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 8),
    ).eval()
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 64)), path)
    return path


class _Flattening(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(x.shape[0], -1))


def flattening_policy(path: Path) -> Path:
    """Its input goes straight into a reshape: nothing in the graph tells the input's shape (scripted,
    so no traced example inputs are stored either)."""
    torch.jit.save(torch.jit.script(_Flattening().eval()), path)
    return path


async def _sessions(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    return int((await client.get("/sessions", headers=headers)).json()["total"])


def _refusal(r: httpx.Response, error: str) -> dict[str, str]:
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"error", "message", "details"} and body["error"] == error, body
    return body


@pytest.mark.slow
async def test_traced_torchscript_without_eval_data_optimizes_with_the_spec_body(
    client: httpx.AsyncClient, make_user: MakeUser, upload_model: UploadModel, tmp_path: Path
) -> None:
    user = await make_user("user")
    r = await upload_model(user, traced_policy(tmp_path / "my_model.pt"), name="My policy")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["input_spec"] == [
        {"name": "input", "shape": [None, 64], "dtype": "float32", "low": None, "high": None}
    ]
    assert body["format_details"]["signature"]["source"] == "graph"
    r = await client.post("/optimize", headers=user, json={"model_id": body["model_id"], **SPEC_BODY})
    assert r.status_code == 200, r.text
    status = await wait_terminal(client, user, r.json()["session_id"], timeout_s=240)
    assert status["status"] == "completed", status
    results = (await client.get(f"/sessions/{status['session_id']}/results", headers=user)).json()
    gains = results["performance_improvements"]
    assert gains["size_reduction_percent"]["value"] > 40, gains
    assert gains["accuracy_retained"]["optimized"] >= 0.95
    # The download runs with the original's inputs, outside robopt.
    selected = results["selected_version"]
    r = await client.get(selected["download_url"], headers=user)
    assert r.status_code == 200
    filename = r.headers["content-disposition"].split("filename=")[-1].strip('"')
    downloaded = tmp_path / f"download{Path(filename).suffix}"
    downloaded.write_bytes(r.content)
    x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    out = run_plain(downloaded, {"input": x})
    assert out.shape == (3, 8) and np.isfinite(out).all()


async def test_no_signature_and_no_data_is_refused_at_optimize(
    client: httpx.AsyncClient, make_user: MakeUser, upload_model: UploadModel, tmp_path: Path
) -> None:
    user = await make_user("user")
    r = await upload_model(user, flattening_policy(tmp_path / "flat.pt"))
    assert r.status_code == 200, r.text
    model = r.json()
    assert model["input_spec"] is None
    signature = model["format_details"]["signature"]
    assert signature["input_names"] == ["x"] and "'x'" in signature["missing"][0]

    r = await client.post("/optimize", headers=user, json={"model_id": model["id"], **SPEC_BODY})
    body = _refusal(r, "validation_error")
    assert "no known input signature" in body["message"]
    assert "input_signature" in body["details"] and "evaluation-data" in body["details"]
    assert '"name": "x"' in body["details"]
    assert await _sessions(client, user) == 0

    # A signature that the model cannot take is refused now too, not by the session.
    bad = [{"name": "x", "shape": [None, 5, 5], "dtype": "float32"}]
    r = await client.post("/optimize", headers=user, json={"model_id": model["id"], "input_signature": bad})
    body = _refusal(r, "data_mismatch")
    assert "does not run with the input signature" in body["message"]
    assert await _sessions(client, user) == 0

    good = [{"name": "x", "shape": [None, 3, 4], "dtype": "float32"}]
    r = await client.post(
        "/optimize", headers=user, json={"model_id": model["id"], "input_signature": good, "max_trials": 2}
    )
    assert r.status_code == 200, r.text
    status = await wait_terminal(client, user, r.json()["session_id"], timeout_s=120)
    assert status["status"] == "completed", status


async def test_signature_given_at_upload_is_checked_against_the_graph(
    client: httpx.AsyncClient, make_user: MakeUser, upload_model: UploadModel, tmp_path: Path
) -> None:
    user = await make_user("user")
    path = traced_policy(tmp_path / "p.pt")
    cases = [
        ([{"name": "input", "shape": [None, 32], "dtype": "float32"}], "data_mismatch", "fixes 64"),
        ([{"name": "input", "shape": [None, 4, 64], "dtype": "float32"}], "data_mismatch", "rank 3"),
        (
            [{"name": "input", "shape": [None, 64], "dtype": "complex64"}],
            "invalid_argument",
            "dtype 'complex64'",
        ),
        ([{"name": "a", "shape": [None, 64]}, {"name": "b", "shape": [None, 64]}], "data_mismatch", "names"),
        ("[{not json", "validation_error", "not valid JSON"),
        ([{"name": "input", "shape": [None, 0]}], "invalid_argument", "positive sizes"),
    ]
    for signature, error, text in cases:
        raw = signature if isinstance(signature, str) else json.dumps(signature)
        body = _refusal(await upload_model(user, path, input_signature=raw), error)
        assert text in body["message"] + str(body["details"]), body
    assert int((await client.get("/models", headers=user)).json()["total"]) == 0

    given = [{"name": "obs", "shape": [None, 64], "dtype": "float32", "low": -2.0, "high": 2.0}]
    r = await upload_model(user, path, input_signature=json.dumps(given))
    assert r.status_code == 200, r.text
    assert r.json()["input_spec"][0] | {} == {**given[0]}
    assert r.json()["format_details"]["signature"]["source"] == "given"


async def test_evaluation_data_defines_a_missing_signature(
    client: httpx.AsyncClient, make_user: MakeUser, upload_model: UploadModel, tmp_path: Path
) -> None:
    user = await make_user("user")
    model_id = (await upload_model(user, flattening_policy(tmp_path / "flat.pt"))).json()["id"]

    async def attach(arrays: dict[str, np.ndarray]) -> httpx.Response:
        path = tmp_path / "data.npz"
        np.savez(path, **arrays)
        with open(path, "rb") as f:
            files = {"file": ("data.npz", f, "application/octet-stream")}
            return await client.post(f"/models/{model_id}/evaluation-data", headers=user, files=files)

    # Data of a shape the model cannot take is refused, and defines nothing.
    _refusal(await attach({"x": np.zeros((4, 5), np.float32)}), "data_mismatch")
    assert (await client.get(f"/models/{model_id}", headers=user)).json()["input_spec"] is None

    r = await attach({"x": np.random.default_rng(0).normal(size=(16, 3, 4)).astype(np.float32)})
    assert r.status_code == 200, r.text
    model = r.json()
    assert model["input_spec"] == [
        {"name": "x", "shape": [None, 3, 4], "dtype": "float32", "low": None, "high": None}
    ]
    assert model["format_details"]["signature"]["source"] == "eval_data"
    r = await client.post("/optimize", headers=user, json={"model_id": model_id, "max_trials": 1})
    assert r.status_code == 200, r.text


class _ActionsAndNote(torch.nn.Module):
    """A policy whose forward returns its actions and a value that is not a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        return {"actions": self.fc(x), "note": None}


async def test_metrics_and_outputs_are_checked_at_optimize(
    client: httpx.AsyncClient, make_user: MakeUser, upload_model: UploadModel, tmp_path: Path
) -> None:
    user = await make_user("user")
    model = (await upload_model(user, traced_policy(tmp_path / "p.pt"))).json()
    (output,) = model["format_details"]["outputs"]
    assert output["shape"] == [None, 8] and output["dtype"] == "float32" and output["comparable"]
    for extra, error, text in (
        ({"metric": "exact_agreement"}, "invalid_argument", "exact_agreement"),
        ({"metric": "accuracy"}, "invalid_argument", "targets"),
        ({"output": "logits"}, "invalid_argument", "logits"),
    ):
        r = await client.post("/optimize", headers=user, json={"model_id": model["id"], **extra})
        body = _refusal(r, error)
        assert text in body["message"] + str(body["details"]), body
    assert await _sessions(client, user) == 0
    r = await client.post(
        "/optimize",
        headers=user,
        json={"model_id": model["id"], "metric": "cosine_similarity", "max_trials": 1},
    )
    assert r.status_code == 200, r.text

    # Outputs that cannot be compared are refused unless the request names one that can.
    path = tmp_path / "note.pt2"
    torch.export.save(torch.export.export(_ActionsAndNote(), (torch.randn(2, 4),)), path)
    model = (await upload_model(user, path)).json()
    outputs = {o["name"]: o for o in model["format_details"]["outputs"]}
    assert outputs["actions"]["comparable"] and not outputs["note"]["comparable"]
    body = _refusal(
        await client.post("/optimize", headers=user, json={"model_id": model["id"]}), "invalid_model"
    )
    assert "note" in body["message"] + str(body["details"])
    r = await client.post(
        "/optimize", headers=user, json={"model_id": model["id"], "output": "actions", "max_trials": 1}
    )
    assert r.status_code == 200, r.text
    status = await wait_terminal(client, user, r.json()["session_id"], timeout_s=120)
    assert status["status"] == "completed", status
