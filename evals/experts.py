"""Scripted experts that label behaviour-cloning data for the MuJoCo reference policies.

Both read only what the policy itself observes, so the cloned policy can in principle match them:
- Reacher: Jacobian-transpose PD control on the fingertip-to-target vector of the observation.
- InvertedDoublePendulum: an LQR controller on the model linearised around the upright pose.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# Reacher-v5 link lengths: the second link's fingertip body sits 0.11 from the elbow.
_REACHER_L1, _REACHER_L2 = 0.1, 0.11
_REACHER_KP, _REACHER_KD = 200.0, 10.0


def reacher_expert(obs: np.ndarray) -> np.ndarray:
    """Torques for Reacher-v5 observations, shape (..., 10) -> (..., 2), in [-1, 1]."""
    obs = np.asarray(obs, dtype=np.float64)
    q1 = np.arctan2(obs[..., 2], obs[..., 0])
    q2 = np.arctan2(obs[..., 3], obs[..., 1])
    qd = obs[..., 6:8]
    err = obs[..., 8:10]  # fingertip - target
    s1, c1 = np.sin(q1), np.cos(q1)
    s12, c12 = np.sin(q1 + q2), np.cos(q1 + q2)
    # Planar two-link Jacobian, rows (x, y), columns (q1, q2).
    j11 = -_REACHER_L1 * s1 - _REACHER_L2 * s12
    j12 = -_REACHER_L2 * s12
    j21 = _REACHER_L1 * c1 + _REACHER_L2 * c12
    j22 = _REACHER_L2 * c12
    vx = j11 * qd[..., 0] + j12 * qd[..., 1]
    vy = j21 * qd[..., 0] + j22 * qd[..., 1]
    fx = -_REACHER_KP * err[..., 0] - _REACHER_KD * vx
    fy = -_REACHER_KP * err[..., 1] - _REACHER_KD * vy
    tau = np.stack([j11 * fx + j21 * fy, j12 * fx + j22 * fy], axis=-1)
    return np.clip(tau, -1.0, 1.0)


@lru_cache(maxsize=1)
def pendulum_lqr_gain() -> np.ndarray:
    """LQR gain for InvertedDoublePendulum-v5, from a finite-difference linearisation of one env step."""
    import gymnasium as gym
    import mujoco
    import scipy.linalg

    env = gym.make("InvertedDoublePendulum-v5")
    sim = env.unwrapped
    model, data = sim.model, sim.data
    frame_skip = int(sim.frame_skip)

    def step_from(state: np.ndarray, ctrl: float) -> np.ndarray:
        data.qpos[:] = state[:3]
        data.qvel[:] = state[3:]
        data.ctrl[:] = ctrl
        mujoco.mj_forward(model, data)
        for _ in range(frame_skip):
            mujoco.mj_step(model, data)
        return np.concatenate([data.qpos, data.qvel]).copy()

    eps = 1e-5
    a = np.zeros((6, 6))
    for i in range(6):
        e = np.zeros(6)
        e[i] = eps
        a[:, i] = (step_from(e, 0.0) - step_from(-e, 0.0)) / (2 * eps)
    b = ((step_from(np.zeros(6), eps) - step_from(np.zeros(6), -eps)) / (2 * eps))[:, None]
    env.close()
    q = np.diag([1.0, 50.0, 50.0, 0.1, 1.0, 1.0])
    r = np.array([[1.0]])
    p = scipy.linalg.solve_discrete_are(a, b, q, r)
    return np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)[0]


def pendulum_expert(obs: np.ndarray) -> np.ndarray:
    """Cart force for InvertedDoublePendulum-v5 observations, shape (..., 9) -> (..., 1), in [-1, 1]."""
    obs = np.asarray(obs, dtype=np.float64)
    q1 = np.arctan2(obs[..., 1], obs[..., 3])
    q2 = np.arctan2(obs[..., 2], obs[..., 4])
    state = np.stack([obs[..., 0], q1, q2, obs[..., 5], obs[..., 6], obs[..., 7]], axis=-1)
    return np.clip(-(state @ pendulum_lqr_gain()), -1.0, 1.0)[..., None]
