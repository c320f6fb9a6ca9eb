"""A session on CPU that allows `compilation` chooses the decode runtime (compile_model): the trial, the
recipe and the results record it, and the download is the runtime's .pt2 that its loader entry point runs
with the eager model's action tokens. Over the HTTP API (in-process ASGI app), rules planner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from state.settings import Settings
from tests.api.session_helpers import wait_terminal
from tests.conftest import AuthHeaders, make_settings
from tests.tools.test_decode_runtime import TINY_VLA
from tools.architectures import build_model
from tools.handle import ArchitectureRef


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path / "data", db_url, max_upload_mb=20, default_max_trials=3)


async def test_cpu_session_chooses_the_runtime_and_results_record_it(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, tmp_path: Path
) -> None:
    ref = ArchitectureRef(name="vla", config=TINY_VLA)
    torch.manual_seed(0)
    model = build_model(ref).eval()
    path = tmp_path / "vla.pt"
    torch.save(model.state_dict(), path)
    with open(path, "rb") as f:
        r = await client.post(
            "/models/upload",
            headers=admin_headers,
            files={"file": ("vla.pt", f, "application/octet-stream")},
            data={"name": "tiny vla", "architecture": ref.model_dump_json()},
        )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = {
        "model_id": r.json()["model_id"],
        "criteria_name": "max_speed",
        "optimization_techniques": ["compilation"],
        "device": "cpu",
        "benchmark_iterations": 10,
        "benchmark_warmup": 2,
    }
    r = await client.post("/optimize", headers=admin_headers, json=body)
    assert r.status_code == 200, r.text
    session_id = r.json()["session_id"]
    status = await wait_terminal(client, admin_headers, session_id, timeout_s=480)
    assert status["status"] == "completed", status

    results = (await client.get(f"/sessions/{session_id}/results", headers=admin_headers)).json()
    first = results["trials"][0]
    assert first["calls"] == [{"tool": "compile_model", "arguments": {"device": "cpu", "mode": "default"}}]
    assert first["measurement"]["accuracy_retained"] == pytest.approx(1.0)  # lossless
    # The gate decides on measured latency (a loaded CI machine may time the runtime no faster); either
    # way the results record the runtime's trial, and an accepted one is the recipe and the download.
    assert first["status"] in ("accepted", "rejected") and first["explanation"]
    if first["status"] == "rejected":
        assert "compile_model" not in json.dumps(results["recipe"])
        return
    assert results["recipe"] == first["calls"]
    assert results["performance_improvements"]["latency_speedup"]["value"] > 1.0
    assert '"techniques_used": ["compilation"]' in json.dumps(results)

    # The download is the runtime's torch.export program; its loader entry point runs it.
    selected = results["selected_version"]
    meta = (await client.get(f"/models/{selected['model_id']}", headers=admin_headers)).json()
    assert meta["format"] == "pt2", meta
    download = await client.get(selected["download_url"], headers=admin_headers)
    assert download.status_code == 200
    saved = tmp_path / "runtime.pt2"
    saved.write_bytes(download.content)
    from tools.architectures import input_specs
    from tools.decode_runtime import load_runtime
    from tools.runtime import synthesize_inputs

    data = synthesize_inputs(input_specs(ref), 8, seed=5)
    tensors = [torch.from_numpy(data[s.name]) for s in input_specs(ref)]
    runtime = load_runtime(saved, mode=None)
    with torch.inference_mode():
        assert np.array_equal(runtime(*tensors).argmax(-1).numpy(), model(*tensors).argmax(-1).numpy())


DECODER_LAYERS = ["vision.blocks.0.fc1", "layers.0.self_attn.q_proj", "layers.0.mlp.up_proj", "lm_head"]
DECODER_PROFILE: dict[str, Any] = {
    "total_parameters": 1_000_000,
    "parameters_by_layer_type": {"Linear": 1_000_000},
    "quantizable_layers": DECODER_LAYERS,
    "prunable_layers": DECODER_LAYERS,
    "layers": [
        {"name": n, "type": "Linear", "parameters": p}
        for n, p in zip(DECODER_LAYERS, [100_000, 300_000, 500_000, 100_000], strict=True)
    ],
}


def test_rules_planner_tries_the_runtime_first_on_a_gpu_and_only_when_compilation_is_allowed() -> None:
    from agents.criteria import Criteria
    from agents.planners.base import check_allowed
    from agents.planners.rules import decide
    from agents.state import ToolCall
    from tests.agents.test_rules_planner import PROFILE, History

    both = Criteria(optimization_techniques=["quantization", "compilation"], criteria_name="max_speed")
    first = decide(History().view(both, device="cuda", profile=DECODER_PROFILE))
    assert first.strategy == "compile_runtime"
    assert first.calls == [
        ToolCall(tool="compile_model", arguments={"device": "cuda", "mode": "reduce-overhead"})
    ]
    # On a CPU the compression steps come first; without a decoder, or without `compilation`, never.
    cpu = decide(History().view(both, device="cpu", profile=DECODER_PROFILE))
    assert cpu.calls[0].tool == "quantize"
    only = Criteria(optimization_techniques=["compilation"], criteria_name="max_speed")
    assert (
        decide(History().view(only, device="cpu", profile=DECODER_PROFILE)).calls[0].tool == "compile_model"
    )
    assert decide(History().view(only, device="cuda", profile=PROFILE)).kind == "finish"
    quant = Criteria(optimization_techniques=["quantization"], criteria_name="max_speed")
    assert decide(History().view(quant, device="cuda", profile=DECODER_PROFILE)).calls[0].tool == "quantize"
    view = History().view(quant, device="cuda", profile=DECODER_PROFILE)
    problem = check_allowed(ToolCall(tool="compile_model", arguments={}), view)
    assert problem is not None and "compilation" in problem
    # The LLM planner sees compile_model only when the session allows it.
    from agents.toolset import planner_tools

    assert "compile_model" not in {t["function"]["name"] for t in planner_tools()}
    assert "compile_model" in {t["function"]["name"] for t in planner_tools(compilation=True)}
