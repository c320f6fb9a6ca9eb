"""A small trained policy for the recovery tests: an MLP behaviour-cloned from a smooth expert on states
the test makes, with evaluation data whose targets are the expert's actions (metric: within_tolerance)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tools.handle import EvalData, InputSpec, ModelHandle

OBS, ACT, HIDDEN = 8, 2, 128
INPUTS = [InputSpec(name="obs", shape=[None, OBS])]


def _expert(x: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    return np.tanh(np.tanh(x @ w1) @ w2 * 1.5).astype(np.float32)


def trained_policy(activation: type[nn.Module] = nn.Tanh, steps: int = 400) -> ModelHandle:
    """An 8-128-128-2 MLP trained for `steps` steps (a second or two on a CPU); deterministic."""
    from evals.training import fit, regression_loss

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((OBS, 32)) / np.sqrt(OBS)
    w2 = rng.standard_normal((32, ACT)) / np.sqrt(32)
    x = rng.standard_normal((4096, OBS)).astype(np.float32)
    x_eval = rng.standard_normal((1024, OBS)).astype(np.float32)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(OBS, HIDDEN), activation(), nn.Linear(HIDDEN, HIDDEN), activation(), nn.Linear(HIDDEN, ACT)
    )  # fmt: skip
    fit(model, [torch.from_numpy(x), torch.from_numpy(_expert(x, w1, w2))], regression_loss,
        steps=steps, batch_size=128, lr=3e-3, seed=0)  # fmt: skip
    data = EvalData(inputs={"obs": x_eval}, targets=_expert(x_eval, w1, w2))
    return ModelHandle(
        runtime="torch", format="state_dict", model=model.eval(), inputs=list(INPUTS), eval_data=data
    )


def with_outlier_channels(handle: ModelHandle, scale: float = 30.0, channels: int = 4) -> ModelHandle:
    """The same function with a few hidden ReLU channels `scale` times larger (their outgoing weights
    divided by as much): exact for ReLU, and the wide activation range that per-tensor int8 cannot hold."""
    out = handle.clone()
    first, second = out.model[0], out.model[2]
    with torch.no_grad():
        first.weight[:channels] *= scale
        first.bias[:channels] *= scale
        second.weight[:, :channels] /= scale
    return out
