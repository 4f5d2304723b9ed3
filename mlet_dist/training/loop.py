"""One training epoch: forward, mean loss, backward (fused table update), dense step.

``on_step(step, loss)`` runs after every step; returning True ends the epoch there.
"""

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn
from tqdm import tqdm

from mlet_dist.data.parquet_batches import LoadedBatch


@dataclass
class EpochStats:
    steps: int
    samples: int
    mean_loss: float
    seconds: float


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[LoadedBatch],
    device: torch.device,
    world_size: int,
    on_step: Optional[Callable[[int, float], Optional[bool]]] = None,
    show_progress: bool = False,
    desc: str = "train",
    total: Optional[int] = None,
) -> EpochStats:

    model.train()
    start = time.perf_counter()
    steps, samples, loss_sum = 0, 0, 0.0
    bar = tqdm(batches, desc=desc, disable=not show_progress, unit="batch", total=total)
    for loaded in bar:
        optimizer.zero_grad()
        loss, _ = model(loaded.batch.to(device))
        loss.backward()
        optimizer.step()
        steps += 1
        samples += loaded.num_valid * world_size
        value = float(loss.detach())
        loss_sum += value
        bar.set_postfix(loss=f"{value:.4f}")
        if on_step is not None and on_step(steps, value):
            break  # the callback asked to stop (early stopping)
    seconds = time.perf_counter() - start
    return EpochStats(steps, samples, loss_sum / max(steps, 1), seconds)
