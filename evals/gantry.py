"""A gantry gripper on a lattice with two coloured targets, rendered with numpy, for the vla-mini policy.

The gripper and two targets (red, blue) sit on a lattice of points STEP apart in [-LIMIT, LIMIT]^3
(in steps); the instruction names one target. Two cameras see the scene: top-down (x, y) and side
(x, z), so neither view alone locates a target in 3-D, and in the top view the gripper can hide the
target under it. The gantry moves whole lattice steps: each translation command is rounded to -1,
0 or +1 step per axis. An episode ends when the policy closes the gripper, or after EPISODE_STEPS;
it succeeds iff the gripper is then on the named target. So a policy must read both views and the
instruction, and stop at the right place: a blind policy (or one that ignores the instruction)
succeeds by chance only.

Actions follow OpenVLA's layout of 7 dimensions (dx, dy, dz, droll, dpitch, dyaw, gripper),
normalised to [-1, 1] and tokenised into 256 bins. The task never rotates, so the three rotation
dimensions are always the centre bin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

ACTION_DIMS = 7
ACTION_BINS = 256
STEP = 0.2  # workspace units per lattice step
LIMIT = 4  # lattice coordinates run from -LIMIT to LIMIT on each axis
EPISODE_STEPS = 24
CLOSE_THRESHOLD = 0.5  # a gripper command above this closes the gripper and ends the episode
STEP_COST = 0.02  # return = 1 on success, minus this per control step
BACKGROUND = 0.5
COLOURS = {"red": (1.0, 0.1, 0.1), "blue": (0.1, 0.2, 1.0)}
GRIPPER_COLOUR = (1.0, 1.0, 1.0)
INSTRUCTIONS = {"red": "reach the red target", "blue": "reach the blue target"}
# Word ids of the instruction vocabulary; 0 is padding. Mapped into the model's text vocabulary.
WORDS = ["<pad>", "<bos>", "reach", "the", "red", "blue", "target"]


def instruction_ids(colour: str, length: int = 8) -> np.ndarray:
    words = ["<bos>", *INSTRUCTIONS[colour].split()]
    ids = [WORDS.index(w) for w in words]
    return np.array(ids + [0] * (length - len(ids)), dtype=np.int64)


def tokenize_actions(actions: np.ndarray) -> np.ndarray:
    """Normalised actions in [-1, 1] -> bin indices in [0, 255] (uniform bins, as OpenVLA)."""
    bins = np.floor((np.clip(actions, -1.0, 1.0) + 1.0) / 2.0 * ACTION_BINS)
    return np.clip(bins, 0, ACTION_BINS - 1).astype(np.int64)


def detokenize_actions(bins: np.ndarray) -> np.ndarray:
    """Bin indices -> bin centres in [-1, 1]."""
    return (np.asarray(bins, dtype=np.float64) + 0.5) / ACTION_BINS * 2.0 - 1.0


@dataclass
class GantryState:
    gripper: np.ndarray  # (3,) lattice coordinates (int)
    targets: dict[str, np.ndarray]  # colour -> (3,) lattice coordinates
    goal: str  # the colour the instruction names


def reset(rng: np.random.Generator) -> GantryState:
    while True:
        gripper, red, blue = rng.integers(-LIMIT, LIMIT + 1, size=(3, 3))
        # Targets apart from each other and from the start, so the instruction decides the motion.
        if (
            np.abs(red - blue).sum() >= 3
            and np.abs(red - gripper).sum() >= 2
            and np.abs(blue - gripper).sum() >= 2
        ):
            break
    goal = "red" if rng.random() < 0.5 else "blue"
    return GantryState(gripper=gripper, targets={"red": red, "blue": blue}, goal=goal)


def expert_action(state: GantryState) -> np.ndarray:
    """One step toward the named target on every axis not yet aligned; close the gripper on it."""
    move = np.sign(state.targets[state.goal] - state.gripper).astype(np.float64)
    action = np.zeros(ACTION_DIMS)
    action[:3] = move
    action[6] = -1.0 if move.any() else 1.0
    return action


def closes(action: np.ndarray) -> bool:
    return bool(action[6] > CLOSE_THRESHOLD)


def on_target(state: GantryState) -> bool:
    return bool(np.array_equal(state.gripper, state.targets[state.goal]))


def step(state: GantryState, action: np.ndarray) -> GantryState:
    move = np.rint(np.clip(np.asarray(action[:3], dtype=np.float64), -1.0, 1.0)).astype(np.int64)
    gripper = np.clip(state.gripper + move, -LIMIT, LIMIT)
    return GantryState(gripper=gripper, targets=state.targets, goal=state.goal)


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _splat(img: np.ndarray, u: float, v: float, colour: tuple[float, float, float], radius: float) -> None:
    """Paint an anti-aliased disc at image coordinates (u right, v down), in pixels."""
    size = img.shape[0]
    if size not in _GRIDS:
        yy, xx = np.mgrid[0:size, 0:size]
        _GRIDS[size] = (xx + 0.5, yy + 0.5)
    xx, yy = _GRIDS[size]
    alpha = np.clip(radius + 0.5 - np.sqrt((xx - u) ** 2 + (yy - v) ** 2), 0.0, 1.0)[..., None]
    img[:] = img * (1 - alpha) + alpha * np.asarray(colour)


def render(state: GantryState, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-down and side views, each (3, size, size) uint8 (channels first), as a camera gives them."""

    def to_px(k: float) -> float:
        return (k * STEP + 1.0) / 2.0 * size

    radius = size / 10
    views = []
    # (axes shown, the depth axis the view drops, +1 when a larger depth coordinate is nearer)
    for axes, depth_axis, nearer in (((0, 1), 2, 1), ((0, 2), 1, -1)):
        img = np.full((size, size, 3), BACKGROUND)
        for colour, pos in sorted(state.targets.items(), key=lambda it: nearer * it[1][depth_axis]):
            _splat(img, to_px(pos[axes[0]]), size - to_px(pos[axes[1]]), COLOURS[colour], radius)
        # The gripper hangs above the scene: always drawn last, smaller than a target.
        g = state.gripper
        _splat(img, to_px(g[axes[0]]), size - to_px(g[axes[1]]), GRIPPER_COLOUR, radius * 0.6)
        views.append(np.rint(img.transpose(2, 0, 1) * 255).astype(np.uint8))
    return views[0], views[1]


def to_model_input(views: np.ndarray) -> np.ndarray:
    """uint8 camera images -> the float32 [-1, 1] range the VLA's input signature states."""
    return views.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


# decide(top, side, instruction, expert_actions) -> actions (N, 7) in [-1, 1]; images uint8.
Decide = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class EpisodeLog:
    success: list[bool]
    returns: list[float]
    steps: list[int]
    final: list[GantryState]  # where each episode ended (closed, or out of steps)
    # Every observation the deciding policy saw, with the expert's action for it (when recorded).
    top: list[np.ndarray] = field(default_factory=list)
    side: list[np.ndarray] = field(default_factory=list)
    instruction: list[np.ndarray] = field(default_factory=list)
    expert: list[np.ndarray] = field(default_factory=list)


def run_episodes(
    states: list[GantryState], decide: Decide, size: int, instruction_len: int, *, record: bool = False
) -> EpisodeLog:
    """Run the episodes in lock-step (one batched decision per control step) until each one closes."""
    n = len(states)
    states = list(states)
    alive = np.ones(n, dtype=bool)
    log = EpisodeLog(success=[False] * n, returns=[0.0] * n, steps=[0] * n, final=states)
    for _ in range(EPISODE_STEPS):
        idx = np.flatnonzero(alive)
        if idx.size == 0:
            break
        views = [render(states[i], size) for i in idx]
        top = np.stack([v[0] for v in views])
        side = np.stack([v[1] for v in views])
        instr = np.stack([instruction_ids(states[i].goal, instruction_len) for i in idx])
        expert = np.stack([expert_action(states[i]) for i in idx])
        if record:
            log.top.append(top)
            log.side.append(side)
            log.instruction.append(instr)
            log.expert.append(expert)
        actions = np.asarray(decide(top, side, instr, expert), dtype=np.float64).reshape(
            idx.size, ACTION_DIMS
        )
        for j, i in enumerate(idx):
            log.steps[i] += 1
            if closes(actions[j]):
                alive[i] = False
                log.success[i] = on_target(states[i])
            else:
                states[i] = step(states[i], actions[j])
    for i in range(n):
        log.returns[i] = float(log.success[i]) - STEP_COST * log.steps[i]
    return log


def generate_dataset(
    num_episodes: int,
    size: int,
    *,
    seed: int,
    noise: float = 0.3,
    instruction_len: int = 8,
    policy: Decide | None = None,
) -> dict[str, np.ndarray]:
    """Observations labelled with the expert's actions.

    Without `policy`: expert rollouts whose executed action is replaced by a random move with
    probability `noise` (so states off the expert's path are covered). With `policy`: that
    policy's own rollouts (DAgger), labelled by the expert. Returns top and side views
    (N, 3, S, S) uint8, instruction (N, L), actions (N, 7) normalised to [-1, 1], their bins (N, 7).
    """
    rng = np.random.default_rng(seed)
    states = [reset(rng) for _ in range(num_episodes)]

    def noisy_expert(top: np.ndarray, side: np.ndarray, instr: np.ndarray, expert: np.ndarray) -> np.ndarray:
        actions = expert.copy()
        perturb = rng.random(len(actions)) < noise
        actions[perturb, :3] = rng.integers(-1, 2, size=(int(perturb.sum()), 3))
        actions[perturb, 6] = -1.0
        return actions

    log = run_episodes(states, policy or noisy_expert, size, instruction_len, record=True)
    acts = np.concatenate(log.expert).astype(np.float32)
    return {
        "top": np.concatenate(log.top),
        "side": np.concatenate(log.side),
        "instruction": np.concatenate(log.instruction),
        "actions": acts,
        "bins": tokenize_actions(acts),
    }
