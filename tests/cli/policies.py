"""Model files of the client tests, built in code with random weights (milliseconds each).

No `from __future__ import annotations` here: TorchScript reads the class annotations as types.
"""

from pathlib import Path

import torch

SIGNATURE = '[{"name": "obs", "shape": [null, 8], "dtype": "float32"}]'


class _Policy(torch.nn.Module):
    """obs [batch, 32] -> actions [batch, 8]: wide enough that quantizing it shrinks it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(32, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 8),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class _Flaky(torch.nn.Module):
    """Answers its first three calls, then raises, like a driver that drops out: it passes the upload's
    checks, and the session fails when the agent benchmarks it."""

    calls: int

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)
        self.calls = 0

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 3:
            raise RuntimeError("sensor driver lost")
        return self.fc(obs)


def traced_policy(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    module = torch.jit.trace(_Policy().eval(), torch.randn(1, 32))
    torch.jit.save(module, str(path))
    return path


def flaky_policy(path: Path) -> Path:
    torch.jit.save(torch.jit.script(_Flaky()), str(path))
    return path
