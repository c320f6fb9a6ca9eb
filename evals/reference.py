"""Reference models: built in code, trained deterministically on data the project generates, cached.

Each reference is cached under `DATA_DIR/reference/<name>/` as `model.safetensors` (weights),
`architecture.json` (the registry reference), `eval_data.npz` (inputs + targets for `evaluate`) and
`meta.json` (build version, training stats, the trained model's own closed-loop numbers). A cache
whose build version differs is rebuilt. Nothing is downloaded.

- `reacher-mlp`: MLP policy (256-256) for MuJoCo Reacher-v5, behaviour-cloned from a
  Jacobian-transpose PD expert with DART noise and DAgger rounds.
- `pendulum-mlp`: larger MLP policy (512-512) for MuJoCo InvertedDoublePendulum-v5, cloned
  from an LQR expert. (The harder second task: Pusher-v5 was tried first, but a scripted
  Jacobian-based pusher got the object to the goal in none of 40 episodes; balancing a double
  pendulum for 1000 steps is unstable closed-loop control that punishes small action errors.)
- `vla-mini`: the `vla_mini` preset (two ViTs, projector, Llama-style decoder, 7 action tokens of
  256 bins) trained on two rendered camera views of a lattice gantry reaching the instructed
  target and closing its gripper there: noisy expert demonstrations, then DAgger rounds.
- `digits-cnn`: `cnn_classifier` on scikit-learn's bundled digits.
- `openvla-7b-shape`: the `openvla_7b` preset, random weights, built on CUDA only (see gpu_suite).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evals import gantry
from evals.experts import pendulum_expert, reacher_expert
from evals.rollouts import MUJOCO_TASKS, GantryBatch, MujocoTask, gantry_decide, run_gantry, run_mujoco
from evals.training import classification_loss, fit, predict, regression_loss
from tools.handle import ArchitectureRef, ModelHandle

log = logging.getLogger("evals.reference")

BUILD_VERSION = 1


@dataclass(frozen=True)
class ReferenceSpec:
    name: str
    description: str
    architecture: ArchitectureRef
    task: str  # "reacher" | "pendulum" | "gantry" | "digits"
    train: Callable[[ArchitectureRef, int], tuple[torch.nn.Module, dict[str, np.ndarray], dict[str, Any]]]
    seed: int = 0
    version: int = 1  # bump when this reference's training or task changes: its cache is rebuilt


# ------------------------------------------------------------------------------------------------
# MuJoCo policies: DART-noised expert data, then DAgger rounds on the cloned policy's own states
# ------------------------------------------------------------------------------------------------


def _torch_policy(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def act(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(obs.astype(np.float32))).numpy()

    return act


def _train_mujoco_policy(
    ref: ArchitectureRef,
    seed: int,
    *,
    task: MujocoTask,
    expert: Callable[[np.ndarray], np.ndarray],
    episodes: int,
    dagger_rounds: int,
    dagger_episodes: int,
    noise: float,
    steps: int,
    finetune_steps: int,
    batch_size: int,
    eval_episodes: int,
) -> tuple[torch.nn.Module, dict[str, np.ndarray], dict[str, Any]]:
    from tools.architectures import build_model

    seeds = list(range(1000, 1000 + episodes))
    data = run_mujoco(task, expert, seeds, action_noise=noise, noise_seed=seed).observations
    model = build_model(ref)
    stats = fit(
        model,
        [torch.from_numpy(data), torch.from_numpy(expert(data).astype(np.float32))],
        regression_loss,
        steps=steps,
        batch_size=batch_size,
        lr=1e-3,
        seed=seed,
    )
    history = [{"round": 0, "samples": len(data), "loss": stats.final_loss}]
    for r in range(dagger_rounds):
        round_seeds = list(range(5000 + 1000 * r, 5000 + 1000 * r + dagger_episodes))
        visited = run_mujoco(
            task, _torch_policy(model), round_seeds, action_noise=noise / 2, noise_seed=seed + r
        )
        data = np.concatenate([data, visited.observations])
        stats = fit(
            model,
            [torch.from_numpy(data), torch.from_numpy(expert(data).astype(np.float32))],
            regression_loss,
            steps=finetune_steps,
            batch_size=batch_size,
            lr=5e-4,
            seed=seed + r + 1,
        )
        history.append({"round": r + 1, "samples": len(data), "loss": stats.final_loss})
    # Evaluation data: states the expert visits on held-out seeds (with the same execution noise).
    held_out = run_mujoco(
        task, expert, list(range(90000, 90000 + eval_episodes)), action_noise=noise, noise_seed=7
    )
    obs = _subsample(held_out.observations, 2048, seed)
    eval_data = {"obs": obs, "targets": expert(obs).astype(np.float32)}
    return model, eval_data, {"training": history}


def _subsample(arr: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(arr) <= n:
        return arr.astype(np.float32)
    idx = np.sort(np.random.default_rng(seed).choice(len(arr), size=n, replace=False))
    return arr[idx].astype(np.float32)


def _train_reacher(ref: ArchitectureRef, seed: int):  # noqa: ANN202
    return _train_mujoco_policy(
        ref,
        seed,
        task=MUJOCO_TASKS["reacher"],
        expert=reacher_expert,
        episodes=200,
        dagger_rounds=2,
        dagger_episodes=100,
        noise=0.2,
        steps=1500,
        finetune_steps=500,
        batch_size=256,
        eval_episodes=60,
    )


def _train_pendulum(ref: ArchitectureRef, seed: int):  # noqa: ANN202
    return _train_mujoco_policy(
        ref,
        seed,
        task=MUJOCO_TASKS["pendulum"],
        expert=pendulum_expert,
        episodes=16,
        dagger_rounds=1,
        dagger_episodes=8,
        noise=0.2,
        steps=1500,
        finetune_steps=500,
        batch_size=128,
        eval_episodes=4,
    )


# ------------------------------------------------------------------------------------------------
# vla-mini on the rendered gantry task
# ------------------------------------------------------------------------------------------------


def _vla_loss(model: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy over the 7 action tokens; images are kept as uint8 and scaled per batch
    (the same scaling as `gantry.to_model_input`)."""
    top, side, instr, bins = batch
    return classification_loss(model, [top.float() / 127.5 - 1.0, side.float() / 127.5 - 1.0, instr, bins])


def _vla_decide(model: torch.nn.Module) -> gantry.Decide:
    return gantry_decide(lambda b: predict(model, [b.top, b.side, b.instruction]).argmax(-1))


def _train_vla(ref: ArchitectureRef, seed: int):  # noqa: ANN202
    """Behaviour cloning from noisy expert rollouts, then DAgger rounds on the policy's own states."""
    from tools.architectures import build_model, resolve

    _, cfg = resolve(ref)
    size, ilen = cfg.dino.image_size, cfg.instruction_len
    model = build_model(ref)
    # The preset's N(0, 0.02) init is OpenVLA's, made for 4096-wide layers; these layers are
    # 64-128 wide and start learning much sooner from PyTorch's fan-in scaled init.
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            module.reset_parameters()
    data = gantry.generate_dataset(VLA_EPISODES, size, seed=seed, instruction_len=ilen)
    rounds = []
    for r in range(VLA_DAGGER_ROUNDS + 1):
        if r:
            own = gantry.generate_dataset(
                VLA_DAGGER_EPISODES, size, seed=seed + r, instruction_len=ilen, policy=_vla_decide(model)
            )
            data = {k: np.concatenate([data[k], own[k]]) for k in data}
        tensors = [torch.from_numpy(data[k]) for k in ("top", "side", "instruction", "bins")]
        stats = fit(
            model,
            tensors,
            _vla_loss,
            steps=VLA_STEPS if r == 0 else VLA_DAGGER_STEPS,
            batch_size=64,
            lr=1e-3 if r == 0 else 5e-4,
            seed=seed + r,
            weight_decay=0.01,
            warmup=50,
        )
        rounds.append({"samples": len(data["bins"]), "loss": stats.final_loss, "seconds": stats.seconds})
        log.info("vla-mini round %d: %s", r, rounds[-1])
    held = gantry.generate_dataset(100, size, seed=seed + 99, instruction_len=ilen)
    idx = np.sort(np.random.default_rng(seed).choice(len(held["bins"]), size=512, replace=False))
    eval_data = {
        "images_a": gantry.to_model_input(held["top"][idx]),
        "images_b": gantry.to_model_input(held["side"][idx]),
        "instruction_ids": held["instruction"][idx],
        "targets": held["bins"][idx],
    }
    return model, eval_data, {"training": rounds}


VLA_EPISODES = 800
VLA_STEPS = 1000
VLA_DAGGER_ROUNDS = 2
VLA_DAGGER_EPISODES = 400
VLA_DAGGER_STEPS = 500


# ------------------------------------------------------------------------------------------------
# digits-cnn
# ------------------------------------------------------------------------------------------------


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return x_tr, x_te, y_tr, y_te


def _train_digits(ref: ArchitectureRef, seed: int):  # noqa: ANN202
    from tools.architectures import build_model

    x_tr, x_te, y_tr, y_te = digits_split(seed)
    model = build_model(ref)
    stats = fit(
        model,
        [torch.from_numpy(x_tr), torch.from_numpy(y_tr)],
        classification_loss,
        steps=500,
        batch_size=64,
        lr=3e-3,
        seed=seed,
    )
    acc = float((predict(model, [x_te]).argmax(-1) == y_te).mean())
    return (
        model,
        {"image": x_te, "targets": y_te},
        {"training": [{"loss": stats.final_loss}], "test_accuracy": acc},
    )


REFERENCES: dict[str, ReferenceSpec] = {
    "reacher-mlp": ReferenceSpec(
        name="reacher-mlp",
        description="MLP policy 10->256->256->2 for MuJoCo Reacher-v5, behaviour-cloned from a PD expert",
        architecture=ArchitectureRef(
            name="mlp_policy", config={"obs_dim": 10, "act_dim": 2, "hidden": [256, 256], "tanh_output": True}
        ),
        task="reacher",
        train=_train_reacher,
    ),
    "pendulum-mlp": ReferenceSpec(
        name="pendulum-mlp",
        description="MLP policy 9->512->512->1 for MuJoCo InvertedDoublePendulum-v5, cloned from LQR",
        architecture=ArchitectureRef(
            name="mlp_policy",
            config={"obs_dim": 9, "act_dim": 1, "hidden": [512, 512], "tanh_output": True},
        ),
        task="pendulum",
        train=_train_pendulum,
    ),
    "vla-mini": ReferenceSpec(
        name="vla-mini",
        description="vla_mini (2 ViTs, projector, Llama decoder, 7x256 action bins) on a rendered gantry",
        architecture=ArchitectureRef(name="vla", config={"preset": "vla_mini"}),
        task="gantry",
        train=_train_vla,
        version=2,
    ),
    "digits-cnn": ReferenceSpec(
        name="digits-cnn",
        description="cnn_classifier (conv 16-32, fc 128) on scikit-learn digits",
        architecture=ArchitectureRef(name="cnn_classifier", config={"channels": [16, 32], "hidden": 128}),
        task="digits",
        train=_train_digits,
    ),
}


def reference_dir(data_dir: Path, name: str) -> Path:
    return Path(data_dir) / "reference" / name


def ensure_reference(name: str, data_dir: Path) -> Path:
    """Build and cache the reference unless a cache of the current build version exists."""
    spec = REFERENCES[name]
    out = reference_dir(data_dir, name)
    meta_path = out / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if (
            meta.get("build_version") == BUILD_VERSION
            and meta.get("version", 1) == spec.version
            and meta.get("architecture") == spec.architecture.model_dump()
        ):
            return out
    from safetensors.torch import save_file

    start = time.perf_counter()
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed)
    model, eval_data, info = spec.train(spec.architecture, spec.seed)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors.tmp"))
    (out / "model.safetensors.tmp").replace(out / "model.safetensors")
    with open(out / "eval_data.npz.tmp", "wb") as fh:
        np.savez(fh, **eval_data)
    (out / "eval_data.npz.tmp").replace(out / "eval_data.npz")
    (out / "architecture.json").write_text(json.dumps(spec.architecture.model_dump(), indent=2))
    handle = load_reference(name, data_dir, built=out)
    closed = task_success(handle, spec.task, suite_seeds(spec.task, "full"))
    meta = {
        "build_version": BUILD_VERSION,
        "version": spec.version,
        "name": name,
        "description": spec.description,
        "architecture": spec.architecture.model_dump(),
        "task": spec.task,
        "seed": spec.seed,
        "build_seconds": round(time.perf_counter() - start, 2),
        "closed_loop": closed,
        **info,
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    log.info("built %s in %.1fs: %s", name, meta["build_seconds"], closed)
    return out


def load_reference(name: str, data_dir: Path, *, built: Path | None = None) -> ModelHandle:
    """The cached reference as a handle, loaded the way a user's upload is (tools.load_model)."""
    from tools.loading import load_model

    out = built or ensure_reference(name, data_dir)
    ref = ArchitectureRef.model_validate(json.loads((out / "architecture.json").read_text()))
    handle = load_model(out / "model.safetensors", architecture=ref, eval_data=out / "eval_data.npz")
    handle.metadata["reference"] = name
    return handle


def reference_meta(name: str, data_dir: Path) -> dict[str, Any]:
    return json.loads((reference_dir(data_dir, name) / "meta.json").read_text())


# ------------------------------------------------------------------------------------------------
# Task success: the handle itself drives the task
# ------------------------------------------------------------------------------------------------

_SEEDS = {
    "reacher": {"smoke": 50, "full": 100},
    "pendulum": {"smoke": 10, "full": 30},
    "gantry": {"smoke": 50, "full": 100},
}


def suite_seeds(task: str, suite: str) -> list[int]:
    n = _SEEDS.get(task, {}).get("full" if suite == "full" else "smoke", 0)
    return list(range(10_000, 10_000 + n))


def task_success(handle: ModelHandle, task: str, seeds: list[int]) -> dict[str, float]:
    """Closed-loop success rate and mean return for policies; test accuracy for digits."""
    from tools.runtime import forward

    if task in MUJOCO_TASKS:
        spec = handle.inputs[0].name
        result = run_mujoco(MUJOCO_TASKS[task], lambda obs: forward(handle, {spec: obs}), seeds)
        return {"success_rate": result.success_rate, "mean_return": result.mean_return}
    if task == "gantry":
        names = [s.name for s in handle.inputs]
        image_size = int(handle.inputs[0].shape[-1])
        ilen = int(handle.inputs[2].shape[-1])

        def policy(batch: GantryBatch) -> np.ndarray:
            logits = forward(
                handle, dict(zip(names, [batch.top, batch.side, batch.instruction], strict=True))
            )
            return logits.argmax(-1)

        result = run_gantry(policy, seeds, image_size, ilen)
        return {"success_rate": result.success_rate, "mean_return": result.mean_return}
    if task == "digits":
        assert handle.eval_data is not None and handle.eval_data.targets is not None
        x = handle.eval_data.inputs[handle.inputs[0].name]
        logits = forward(handle, {handle.inputs[0].name: x})
        return {"success_rate": float((logits.argmax(-1) == handle.eval_data.targets).mean())}
    raise ValueError(f"unknown task {task!r}")
