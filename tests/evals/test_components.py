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


def _tokenized(actions: np.ndarray) -> np.ndarray:
    return gantry.detokenize_actions(gantry.tokenize_actions(actions))


def test_gantry_expert_tokenized_actions_succeed_and_instruction_matters() -> None:
    states = [gantry.reset(np.random.default_rng(s)) for s in range(40)]

    def expert(top: np.ndarray, side: np.ndarray, instr: np.ndarray, actions: np.ndarray) -> np.ndarray:
        return _tokenized(actions)

    log = gantry.run_episodes(states, expert, 32, 8)
    assert all(log.success)
    assert max(log.steps) <= gantry.EPISODE_STEPS
    # Following the other colour's expert closes on the other target: judged against the instruction
    # actually given, none of those episodes succeeds.
    decoys = [gantry.GantryState(s.gripper, s.targets, "red" if s.goal == "blue" else "blue") for s in states]
    decoy_log = gantry.run_episodes(decoys, expert, 32, 8)
    assert all(decoy_log.success)  # each reached the colour it followed...
    judged = [
        gantry.GantryState(d.gripper, d.targets, s.goal) for d, s in zip(decoy_log.final, states, strict=True)
    ]
    assert not any(gantry.on_target(j) for j in judged)  # ...which is never the instructed one


def test_gantry_blind_policies_fail() -> None:
    states = [gantry.reset(np.random.default_rng(s)) for s in range(40)]
    close_now = np.zeros(gantry.ACTION_DIMS)
    close_now[6] = 1.0
    never_close = np.zeros(gantry.ACTION_DIMS)
    never_close[:3] = 1.0
    never_close[6] = -1.0
    logs = [
        gantry.run_episodes(states, lambda t, s, i, e, a=action: np.tile(_tokenized(a), (len(t), 1)), 32, 8)
        for action in (close_now, never_close)
    ]
    # Closing at once ends every episode after one step, on target only by chance (the start is
    # at least 2 steps from either target, so never); never closing runs them all out.
    assert logs[0].steps == [1] * 40 and not any(logs[0].success)
    assert logs[1].steps == [gantry.EPISODE_STEPS] * 40 and not any(logs[1].success)


def test_gantry_moves_whole_lattice_steps_within_limits() -> None:
    state = gantry.GantryState(
        np.array([gantry.LIMIT, 0, 0]), {"red": np.zeros(3, int), "blue": np.ones(3, int)}, "red"
    )
    moved = gantry.step(state, _tokenized(np.array([1.0, -1.0, 0.0, 0, 0, 0, -1.0])))
    assert moved.gripper.tolist() == [gantry.LIMIT, -1, 0]  # clipped at the limit; bin centres round
    assert not gantry.closes(_tokenized(np.zeros(gantry.ACTION_DIMS)))  # the centre bin keeps it open


def test_gantry_views_show_the_scene() -> None:
    state = gantry.reset(np.random.default_rng(1))
    top, side = gantry.render(state, 32)
    assert top.shape == side.shape == (3, 32, 32) and top.dtype == np.uint8
    # The red target is visible as a red blob in the top view.
    red = (top[0] > 200) & (top[1] < 100) & (top[2] < 100)
    assert red.sum() >= 2
    # The two views differ (different projections), and the model's input range is [-1, 1].
    assert not np.array_equal(top, side)
    x = gantry.to_model_input(top)
    assert x.dtype == np.float32 and -1.0 <= x.min() and x.max() <= 1.0


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
    labels = {recipe_label(r) for r in both}
    assert "magnitude50+dynamic_int8" in labels
    # The recovery tools are in the grid: distilled structured pruning, QAT, the size-target mix.
    assert {"structured50+distill+weight_only_int4", "weight_only_int4/qat", "weight_only_int4@0.5"} <= labels
    assert "structured75+distill+dynamic_int8/qat" in labels
    assert not any("magnitude" in label and ("distill" in label or "/qat" in label) for label in labels)
    smoke = oracle_recipes(
        Criteria(optimization_techniques=["quantization", "pruning"], device="cpu"), suite="smoke"
    )
    assert 4 * 10 <= len(smoke) < len(both)  # the policies' 10 trials stay under a quarter of it
    assert not {"bf16", "magnitude75", "structured25+bf16"} & {recipe_label(r) for r in smoke}
    distill = next(s for r in smoke for s in r if s["tool"] == "distill")
    assert distill["time_budget_s"] == 4.0 and distill["learning_rate"] == 5e-4  # a model of unknown size


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


def test_vla_reference_training_uses_dagger_and_its_policy_drives_the_gantry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The vla-mini builder at a tiny budget: expert data, one DAgger round, eval data, closed loop."""
    import torch

    from evals import reference
    from evals.rollouts import run_gantry

    monkeypatch.setattr(reference, "VLA_EPISODES", 12)
    monkeypatch.setattr(reference, "VLA_STEPS", 2)
    monkeypatch.setattr(reference, "VLA_DAGGER_ROUNDS", 1)
    monkeypatch.setattr(reference, "VLA_DAGGER_EPISODES", 6)
    monkeypatch.setattr(reference, "VLA_DAGGER_STEPS", 2)
    spec = reference.REFERENCES["vla-mini"]
    model, eval_data, info = spec.train(spec.architecture, 0)
    rounds = info["training"]
    assert len(rounds) == 2 and rounds[1]["samples"] > rounds[0]["samples"]  # the policy's own states added
    assert eval_data["images_a"].shape == (512, 3, 32, 32) and eval_data["images_a"].dtype == np.float32
    assert eval_data["targets"].shape == (512, 7)
    # The held-out labels are the expert's: translation bins at the ends or the centre, never between.
    assert set(np.unique(eval_data["targets"][:, :3])) <= {0, 128, 255}

    def policy(batch):  # noqa: ANN001, ANN202
        with torch.inference_mode():
            logits = model(
                torch.from_numpy(batch.top), torch.from_numpy(batch.side), torch.from_numpy(batch.instruction)
            )
        return logits.argmax(-1).numpy()

    result = run_gantry(policy, list(range(8)), 32, 8)
    assert len(result.episode_success) == 8
    # Returns are 1 on success minus the step cost of each control step taken (at least one).
    for ok, ret in zip(result.episode_success, result.episode_returns, strict=True):
        steps = (float(ok) - ret) / gantry.STEP_COST
        assert steps == pytest.approx(round(steps)) and 1 <= round(steps) <= gantry.EPISODE_STEPS
