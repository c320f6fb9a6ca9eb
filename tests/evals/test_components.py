"""Fast checks of the harness's parts: experts, the rendered gantry task, scoring rules, LLM replay."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import pytest

from agents.criteria import Measurement
from evals import gantry
from evals.experts import pendulum_expert, reacher_expert
from evals.harness import dominates
from evals.methods import oracle_recipes, recipe_label
from evals.rollouts import MUJOCO_TASKS, run_mujoco


def test_reacher_expert_reaches_most_targets() -> None:
    result = run_mujoco(MUJOCO_TASKS["reacher"], reacher_expert, list(range(20)))
    assert result.success_rate >= 0.85
    # A policy that does nothing almost never ends within 2 cm of the target.
    idle = run_mujoco(MUJOCO_TASKS["reacher"], lambda obs: np.zeros((len(obs), 2)), list(range(20)))
    assert idle.success_rate <= 0.1


def test_pendulum_lqr_expert_balances_and_zero_action_falls() -> None:
    ok = run_mujoco(MUJOCO_TASKS["pendulum"], pendulum_expert, [0, 1], max_steps=300)
    assert all(r > 250 for r in ok.episode_returns)  # about 9.3 reward per step alive
    idle = run_mujoco(MUJOCO_TASKS["pendulum"], lambda obs: np.zeros((len(obs), 1)), [0, 1], max_steps=300)
    assert max(idle.episode_returns) < 200


def test_gantry_expert_tokenized_actions_succeed_and_instruction_matters() -> None:
    rng = np.random.default_rng(0)
    wins, wrong_target_wins = 0, 0
    for _ in range(30):
        state = gantry.reset(rng)
        other = "red" if state.goal == "blue" else "blue"
        decoy = gantry.GantryState(state.gripper, state.targets, other)
        for _ in range(gantry.EPISODE_STEPS):
            action = gantry.detokenize_actions(gantry.tokenize_actions(gantry.expert_action(state)))
            state = gantry.step(state, action)
            act_decoy = gantry.detokenize_actions(gantry.tokenize_actions(gantry.expert_action(decoy)))
            decoy = gantry.step(decoy, act_decoy)
        wins += gantry.success(state, action)
        # Following the other colour never counts as reaching the instructed one.
        wrong_target_wins += gantry.success(
            gantry.GantryState(decoy.gripper, decoy.targets, state.goal), act_decoy
        )
    assert wins == 30
    assert wrong_target_wins == 0


def test_gantry_views_show_the_scene() -> None:
    state = gantry.reset(np.random.default_rng(1))
    top, side = gantry.render(state, 32)
    assert top.shape == side.shape == (3, 32, 32)
    assert 0.0 <= top.min() and top.max() <= 1.0
    # The red target is visible as a red blob in the top view.
    red = (top[0] > 0.8) & (top[1] < 0.4) & (top[2] < 0.4)
    assert red.sum() >= 2
    # The two views differ (different projections).
    assert not np.allclose(top, side)


def test_dominance_ignores_noise_but_catches_real_wins() -> None:
    a = Measurement(size_bytes=1000, latency_p50_ms=1.0, accuracy_retained=0.99)
    assert not dominates(a.model_copy(update={"latency_p50_ms": 0.98}), a)  # within 5%: noise
    assert dominates(a.model_copy(update={"size_bytes": 500}), a)
    assert not dominates(a.model_copy(update={"size_bytes": 500, "accuracy_retained": 0.9}), a)


def test_oracle_grid_respects_techniques_and_is_large_enough() -> None:
    from agents.criteria import Criteria

    both = oracle_recipes(Criteria(optimization_techniques=["quantization", "pruning"], device="cpu"))
    assert len(both) >= 32  # the agent's 8 trials are at most a quarter of it
    only_q = oracle_recipes(Criteria(optimization_techniques=["quantization"], device="cpu"))
    assert all(s["tool"] == "quantize" for r in only_q for s in r)
    assert "magnitude50+dynamic_int8" in {recipe_label(r) for r in both}


def test_recording_against_mock_server_replays_identically(tmp_path: Path) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from agents.llm import LLMClient, load_prompt
    from agents.toolset import planner_tools
    from evals.llm_replay import RecordingLLMClient, ReplayLLMClient
    from evals.mock_llm import MOCK_MODEL, PROVENANCE, ScriptedLLMServer

    state = {
        "criteria": {"allowed_techniques": ["pruning", "quantization"]},
        "methods_offered": {},
        "trials": [],
    }
    messages = [
        {"role": "system", "content": load_prompt("planner")},
        {"role": "user", "content": "Session state:\n\n" + json.dumps(state) + "\n\nChoose."},
    ]
    path = tmp_path / "case.jsonl"
    with ScriptedLLMServer() as server:
        client = LLMClient(MOCK_MODEL, api_base=server.base_url, api_key="mock", max_retries=0)
        recorder = RecordingLLMClient(client, path, case="case", provenance=PROVENANCE)
        live = asyncio.run(recorder.complete(messages, tools=planner_tools()))
    assert live.tool_calls and live.tool_calls[0].name == "prune"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert "NOT a real LLM provider" in lines[0]["_meta"]["provenance"]
    assert lines[1]["role"] == "planner"

    replay = ReplayLLMClient(path)
    again = asyncio.run(replay.complete(messages, tools=planner_tools()))
    assert again.content == live.content
    assert [(c.name, c.arguments) for c in again.tool_calls] == [
        (c.name, c.arguments) for c in live.tool_calls
    ]
    assert replay.mismatched_requests == 0
    from agents.llm import LLMError

    with pytest.raises(LLMError):  # exhausted: the planner falls back as on a provider outage
        asyncio.run(replay.complete(messages, tools=planner_tools()))
