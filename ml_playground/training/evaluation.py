"""Loss over a whole split (validation, ``eval``) and a fixed-batch estimate on the train split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from ml_playground.core.devices import Precision
from ml_playground.data_pipeline.batches import BatchSampler, sequential_windows
from ml_playground.models.core.model import cross_entropy


@dataclass(frozen=True)
class SplitLoss:
    loss: float
    tokens: int


@torch.inference_mode()
def evaluate_split(
    model: nn.Module,
    tokens: npt.NDArray[np.unsignedinteger[Any]],
    *,
    block_size: int,
    batch_size: int,
    precision: Precision,
) -> SplitLoss:
    """Mean next-token loss over every target of ``tokens`` exactly once."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for x, y in sequential_windows(tokens, block_size, batch_size):
        x, y = x.to(precision.device), y.to(precision.device)
        with precision.autocast():
            logits = model(x)
        total += cross_entropy(logits, y).double().cpu() * y.numel()
        count += y.numel()
    model.train(was_training)
    return SplitLoss(float(total / count), count)


@torch.inference_mode()
def estimate_loss(model: nn.Module, sampler: BatchSampler, iters: int, precision: Precision) -> float:
    """Mean loss over ``iters`` fixed random batches (the same batches at every evaluation)."""
    was_training = model.training
    model.eval()
    losses = []
    for i in range(iters):
        x, y = sampler.batch(i)
        x, y = x.to(precision.device), y.to(precision.device)
        with precision.autocast():
            losses.append(float(cross_entropy(model(x), y)))
    model.train(was_training)
    return sum(losses) / len(losses)
