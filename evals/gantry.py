"""A kinematic gantry gripper with two coloured targets, rendered with numpy, for the vla-mini policy.

The robot is a point end effector in [-1, 1]^3. Two targets (red, blue) sit in the workspace; the
instruction names one of them. Two cameras see the scene: top-down (x, y) and side (x, z), so
neither view alone locates a target in 3-D. Actions follow OpenVLA's layout of 7 dimensions
(dx, dy, dz, droll, dpitch, dyaw, gripper), normalised to [-1, 1] and tokenised into 256 bins.
The planar task never rotates, so the three rotation dimensions are always the centre bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTION_DIMS = 7
ACTION_BINS = 256
STEP = 0.1  # workspace units per step at a full-scale action
REACH_TOLERANCE = 0.08
EPISODE_STEPS = 30
COLOURS = {"red": (1.0, 0.15, 0.1), "blue": (0.1, 0.3, 1.0)}
GRIPPER_COLOUR = (0.9, 0.9, 0.9)
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
    gripper: np.ndarray  # (3,)
    targets: dict[str, np.ndarray]  # colour -> (3,)
    goal: str  # the colour the instruction names


def reset(rng: np.random.Generator) -> GantryState:
    gripper = rng.uniform(-0.9, 0.9, size=3)
    while True:
        red, blue = rng.uniform(-0.8, 0.8, size=(2, 3))
        # Targets apart from each other and from the start, so the instruction decides the motion.
        if (
            np.linalg.norm(red - blue) > 0.6
            and np.linalg.norm(red - gripper) > 0.4
            and np.linalg.norm(blue - gripper) > 0.4
        ):
            break
    goal = "red" if rng.random() < 0.5 else "blue"
    return GantryState(gripper=gripper, targets={"red": red, "blue": blue}, goal=goal)


def expert_action(state: GantryState) -> np.ndarray:
    """Move each axis by a half or a full step toward the named target; close the gripper on arrival."""
    err = state.targets[state.goal] - state.gripper
    move = np.clip(np.round(err / (STEP / 2)), -2, 2) / 2  # {-1, -0.5, 0, 0.5, 1}
    arrived = np.linalg.norm(err) < REACH_TOLERANCE
    action = np.zeros(ACTION_DIMS)
    action[:3] = move
    action[6] = 1.0 if arrived else -1.0
    return action


def step(state: GantryState, action: np.ndarray) -> GantryState:
    gripper = np.clip(state.gripper + STEP * np.asarray(action[:3], dtype=np.float64), -1.0, 1.0)
    return GantryState(gripper=gripper, targets=state.targets, goal=state.goal)


def success(state: GantryState, last_action: np.ndarray) -> bool:
    near = np.linalg.norm(state.targets[state.goal] - state.gripper) < REACH_TOLERANCE
    return bool(near and last_action[6] > 0)


def _splat(img: np.ndarray, u: float, v: float, colour: tuple[float, float, float], radius: float) -> None:
    """Add an anti-aliased disc at image coordinates (u right, v down), in pixels."""
    h, w, _ = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    d2 = (xx + 0.5 - u) ** 2 + (yy + 0.5 - v) ** 2
    alpha = np.clip(radius + 0.5 - np.sqrt(d2), 0.0, 1.0)[..., None]
    img[:] = img * (1 - alpha) + alpha * np.asarray(colour)


def render(state: GantryState, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-down and side views, each (3, size, size) float32 in [0, 1] (channels first)."""

    def to_px(a: float) -> float:
        return (a + 1.0) / 2.0 * size

    radius = max(1.0, size / 16)
    views = []
    for axes in ((0, 1), (0, 2)):
        img = np.full((size, size, 3), 0.25, dtype=np.float64)
        # Draw farther objects first: the depth axis is the one the view drops.
        depth_axis = 2 if axes == (0, 1) else 1
        items = [(t, COLOURS[c], radius) for c, t in state.targets.items()]
        items.append((state.gripper, GRIPPER_COLOUR, radius * 0.8))
        sign = 1 if depth_axis == 2 else -1  # top view: higher z is nearer; side view: lower y is nearer
        for pos, colour, r in sorted(items, key=lambda it: sign * it[0][depth_axis]):
            _splat(img, to_px(pos[axes[0]]), size - to_px(pos[axes[1]]), colour, r)
        views.append(img.transpose(2, 0, 1).astype(np.float32))
    return views[0], views[1]


def generate_dataset(
    num_episodes: int, size: int, *, seed: int, noise: float = 0.3, instruction_len: int = 8
) -> dict[str, np.ndarray]:
    """Expert rollouts with perturbed execution (so states off the expert's path are covered).

    Returns top and side views (N,3,S,S) scaled to [-1, 1], instruction (N,L), actions (N,7)
    normalised to [-1, 1] and their bins (N,7).
    """
    rng = np.random.default_rng(seed)
    tops, sides, instr, actions = [], [], [], []
    for _ in range(num_episodes):
        state = reset(rng)
        ids = instruction_ids(state.goal, instruction_len)
        for _ in range(EPISODE_STEPS):
            top, side = render(state, size)
            act = expert_action(state)
            tops.append(top)
            sides.append(side)
            instr.append(ids)
            actions.append(act)
            executed = act.copy()
            if rng.random() < noise:
                executed[:3] = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=3)
            state = step(state, executed)
    acts = np.asarray(actions, dtype=np.float32)
    return {
        "top": np.asarray(tops, dtype=np.float32) * 2.0 - 1.0,
        "side": np.asarray(sides, dtype=np.float32) * 2.0 - 1.0,
        "instruction": np.asarray(instr, dtype=np.int64),
        "actions": acts,
        "bins": tokenize_actions(acts),
    }
