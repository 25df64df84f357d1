"""Loss over a whole split (validation, ``eval``) and a fixed-batch estimate on the train split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from ml_playground.core.devices import Precision
from ml_playground.data_pipeline.batches import IGNORE_INDEX, BatchSampler, Index, Mask, sequential_windows
from ml_playground.models.core.model import cross_entropy
from ml_playground.training.distributed import SINGLE_PROCESS, DistributedContext

EVAL_BATCH_SIZE = 64  # windows per forward pass; any value gives the same loss


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
    precision: Precision,
    batch_size: int = EVAL_BATCH_SIZE,
    dist: DistributedContext = SINGLE_PROCESS,
    mask: Mask | None = None,
    index: Index | None = None,
    max_targets: int | None = None,
) -> SplitLoss:
    """Mean next-token loss over every target of ``tokens`` exactly once (those the mask keeps); ranks share.

    ``max_targets`` bounds it to a fixed, evenly spaced subset of windows (evaluation during training of
    large models); the whole split is the default.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64)  # (loss * tokens, tokens)
    windows = sequential_windows(
        tokens,
        block_size,
        batch_size,
        rank=dist.rank,
        world_size=dist.world_size,
        mask=mask,
        index=index,
        max_targets=max_targets,
    )
    for x, y in windows:
        counted = int((y != IGNORE_INDEX).sum())
        if counted == 0:
            continue
        x, y = x.to(precision.device), y.to(precision.device)
        with precision.autocast():
            logits = model(x)
        sums[0] += cross_entropy(logits, y).double().cpu() * counted
        sums[1] += counted
    dist.sum_(sums)
    model.train(was_training)
    return SplitLoss(float(sums[0] / sums[1]), int(sums[1]))


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
