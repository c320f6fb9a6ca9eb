"""Deterministic training loops for the reference models (fixed seeds, fixed data order, CPU)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger("evals.training")


@dataclass
class TrainStats:
    steps: int
    final_loss: float
    seconds: float


def _schedule(opt: torch.optim.Optimizer, base_lr: float, step: int, total: int, warmup: int) -> None:
    if step < warmup:
        lr = base_lr * (step + 1) / warmup
    else:
        lr = 0.5 * base_lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    for group in opt.param_groups:
        group["lr"] = lr


def fit(
    model: nn.Module,
    tensors: list[torch.Tensor],
    loss_fn: Callable[[nn.Module, list[torch.Tensor]], torch.Tensor],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
    warmup: int = 50,
) -> TrainStats:
    """Minibatch AdamW with a cosine schedule; batches drawn from a seeded generator."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = tensors[0].shape[0]
    model.train()
    loss_value = float("nan")
    perm = torch.randperm(n, generator=gen)
    cursor = 0
    for step in range(steps):
        if cursor + batch_size > n:
            perm = torch.randperm(n, generator=gen)
            cursor = 0
        idx = perm[cursor : cursor + batch_size]
        cursor += batch_size
        _schedule(opt, lr, step, steps, min(warmup, steps // 5 + 1))
        loss = loss_fn(model, [t[idx] for t in tensors])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = float(loss.detach())
        if (step + 1) % 100 == 0:
            log.info("step %d/%d loss %.4f (%.1fs)", step + 1, steps, loss_value, time.perf_counter() - start)
    model.eval()
    return TrainStats(steps=steps, final_loss=loss_value, seconds=time.perf_counter() - start)


def regression_loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def classification_loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    *inputs, y = batch
    logits = model(*inputs)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def predict(model: nn.Module, arrays: list[np.ndarray], batch_size: int = 512) -> np.ndarray:
    """Batched inference of a torch module on float32/int64 numpy inputs."""
    outs = []
    with torch.inference_mode():
        for i in range(0, arrays[0].shape[0], batch_size):
            outs.append(model(*[torch.from_numpy(a[i : i + batch_size]) for a in arrays]).float().numpy())
    return np.concatenate(outs)
