"""Closed-loop rollouts: a policy (any callable, or a model handle) drives the environment.

Episodes run in lock-step so the policy sees one batch per control step (one forward pass for all
seeds): the same network, called the way a robot would call it, only cheaper to evaluate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from evals import gantry

Policy = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class MujocoTask:
    env_id: str
    obs_dim: int
    act_dim: int
    max_steps: int
    # success(final_obs, steps_survived) for one episode
    success: Callable[[np.ndarray, int], bool]
    make_kwargs: dict = field(default_factory=dict)


def _reacher_success(obs: np.ndarray, steps: int) -> bool:
    return bool(np.linalg.norm(obs[8:10]) < REACHER_TOLERANCE)


def _pendulum_success(obs: np.ndarray, steps: int) -> bool:
    return steps >= PENDULUM_STEPS


REACHER_TOLERANCE = 0.02  # fingertip within 2 cm of the target (their radii sum to 1.9 cm)
PENDULUM_STEPS = 1000
REACHER = MujocoTask("Reacher-v5", 10, 2, 50, _reacher_success)
PENDULUM = MujocoTask("InvertedDoublePendulum-v5", 9, 1, PENDULUM_STEPS, _pendulum_success)
MUJOCO_TASKS = {"reacher": REACHER, "pendulum": PENDULUM}


@dataclass
class RolloutResult:
    success_rate: float
    mean_return: float
    observations: np.ndarray  # every observation the policy acted on, (N, obs_dim)
    episode_returns: list[float]
    episode_success: list[bool]


def run_mujoco(
    task: MujocoTask,
    policy: Policy,
    seeds: list[int],
    *,
    action_noise: float = 0.0,
    noise_seed: int = 0,
    max_steps: int | None = None,
) -> RolloutResult:
    """Run one episode per seed; `action_noise` perturbs executed actions (for data collection)."""
    import gymnasium as gym

    envs = [gym.make(task.env_id, **task.make_kwargs) for _ in seeds]
    rng = np.random.default_rng(noise_seed)
    obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)])
    alive = np.ones(len(seeds), dtype=bool)
    steps = np.zeros(len(seeds), dtype=int)
    returns = np.zeros(len(seeds))
    final = obs.copy()
    seen = []
    low, high = envs[0].action_space.low, envs[0].action_space.high
    for _ in range(max_steps or task.max_steps):
        idx = np.flatnonzero(alive)
        if idx.size == 0:
            break
        batch = obs[idx].astype(np.float32)
        seen.append(batch)
        actions = np.asarray(policy(batch), dtype=np.float64).reshape(idx.size, task.act_dim)
        if action_noise:
            actions = actions + rng.normal(0.0, action_noise, size=actions.shape)
        actions = np.clip(actions, low, high)
        for j, i in enumerate(idx):
            o, r, terminated, truncated, _ = envs[i].step(actions[j])
            obs[i] = o
            final[i] = o
            returns[i] += r
            steps[i] += 1
            if terminated:
                alive[i] = False
    for env in envs:
        env.close()
    ok = [task.success(final[i], int(steps[i])) for i in range(len(seeds))]
    return RolloutResult(
        success_rate=float(np.mean(ok)),
        mean_return=float(np.mean(returns)),
        observations=np.concatenate(seen) if seen else np.zeros((0, task.obs_dim), np.float32),
        episode_returns=[float(r) for r in returns],
        episode_success=ok,
    )


@dataclass
class GantryBatch:
    top: np.ndarray  # (N, 3, S, S) float32 in [-1, 1]
    side: np.ndarray
    instruction: np.ndarray  # (N, L) int64


def gantry_decide(policy: Callable[[GantryBatch], np.ndarray]) -> gantry.Decide:
    """A policy over model inputs (action-bin indices out) as the gantry's `decide`."""

    def decide(top: np.ndarray, side: np.ndarray, instr: np.ndarray, expert: np.ndarray) -> np.ndarray:
        batch = GantryBatch(gantry.to_model_input(top), gantry.to_model_input(side), instr)
        bins = np.asarray(policy(batch)).reshape(len(instr), gantry.ACTION_DIMS)
        return gantry.detokenize_actions(bins)

    return decide


def run_gantry(
    policy: Callable[[GantryBatch], np.ndarray],
    seeds: list[int],
    image_size: int,
    instruction_len: int,
) -> RolloutResult:
    """`policy` maps a batch of observations to action-bin indices (N, 7); one episode per seed."""
    states = [gantry.reset(np.random.default_rng(s)) for s in seeds]
    log = gantry.run_episodes(states, gantry_decide(policy), image_size, instruction_len)
    return RolloutResult(
        success_rate=float(np.mean(log.success)),
        mean_return=float(np.mean(log.returns)),
        observations=np.zeros((0, 0), np.float32),
        episode_returns=log.returns,
        episode_success=log.success,
    )
