"""Loss over a whole split (validation, ``eval``) and a fixed-batch estimate on the train split."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from ml_playground.core.devices import Precision
from ml_playground.core.lazy_types import is_fsdp_module
from ml_playground.core.losses import cross_entropy
from ml_playground.core.sampling_rules import grad_off
from ml_playground.data_pipeline.batches import IGNORE_INDEX, BatchSampler, Index, Mask, sequential_windows
from ml_playground.training.distributed import SINGLE_PROCESS, DistributedContext

EVAL_BATCH_SIZE = 64  # windows per batch; any value gives the same loss
LOGITS_BYTES = 256 * 2**20  # float32 logits per forward pass: a batch is run a few windows at a time to stay below


class EvaluationInterrupted(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """A stop was asked for during an evaluation; the result is dropped, the run stops at the step it has."""


@dataclass(frozen=True)
class SplitLoss:
    loss: float
    tokens: int
    bits_per_byte: float | None = None  # with token_bytes: bits over the UTF-8 bytes of the targets
    bytes: int = 0


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
    token_bytes: npt.NDArray[np.int64] | None = None,
    interrupted: Callable[[], bool] | None = None,
    whole: bool = False,
    logits_bytes: int = LOGITS_BYTES,
) -> SplitLoss:
    """Mean next-token loss over every target of ``tokens`` exactly once (those the mask keeps); ranks share.

    ``max_targets`` bounds it to a fixed, evenly spaced subset of windows (evaluation during training of
    large models); the whole split is the default. ``token_bytes`` (bytes per id, ``core.token_bytes``)
    adds bits per byte: the targets' losses in bits over the bytes they decode to, special tokens left out.
    ``interrupted`` is asked before every batch; when it says yes, ``EvaluationInterrupted`` is raised, so a
    stop signal is honoured within one batch instead of after a whole split. An FSDP model (every
    forward pass a collective): each rank makes as many forward passes as the busiest one, running
    the model on a spare window where it has none left.
    """
    sharded = is_fsdp_module(model)
    with grad_off(model):
        was_training = model.training
        model.eval()
        sums = torch.zeros(4, dtype=torch.float64)  # (loss * tokens, tokens, nats of byte-carrying targets, bytes)
        lengths = torch.from_numpy(token_bytes) if token_bytes is not None else None
        rows: int | None = None  # windows per forward pass: a large vocabulary's logits would not fit 64
        windows = sequential_windows(
            tokens,
            block_size,
            batch_size,
            rank=dist.rank,
            world_size=dist.world_size,
            mask=mask,
            index=index,
            max_targets=max_targets,
            whole=whole,
        )
        batches = iter(windows)
        while True:
            batch = next(batches, None)
            if sharded and dist.max_(int(batch is not None)) == 0:  # every rank asks: anyone left with a batch?
                break
            if batch is None:
                if not sharded:
                    break
                model(torch.zeros((1, block_size), dtype=torch.long, device=precision.device))  # keep in step
                continue
            x, y = batch
            if interrupted is not None and interrupted():
                model.train(was_training)
                raise EvaluationInterrupted
            counted = int((y != IGNORE_INDEX).sum())
            if counted == 0:
                if sharded:
                    model(x[:1].to(precision.device))
                continue
            x, y = x.to(precision.device), y.to(precision.device)
            start = 0
            while start < len(x):  # FSDP: every rank one forward pass per batch, as the others
                end = len(x) if sharded else start + (rows or 1)  # rows: known after the first pass
                with precision.autocast():
                    logits = model(x[start:end])
                rows = rows or max(1, logits_bytes // (4 * logits[0].numel()))
                _add_scores(sums, logits, y[start:end], lengths)
                start = end
        dist.sum_(sums)
        model.train(was_training)
        bits_per_byte = float(sums[2] / math.log(2) / sums[3]) if lengths is not None and sums[3] > 0 else None
        return SplitLoss(float(sums[0] / sums[1]), int(sums[1]), bits_per_byte, int(sums[3]))


def _add_scores(sums: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor | None) -> None:
    """Add (loss x targets, targets, nats of byte-carrying targets, their bytes) of one forward pass to ``sums``."""
    counted = int((y != IGNORE_INDEX).sum())
    if counted == 0:
        return
    sums[0] += cross_entropy(logits, y).double().cpu() * counted
    sums[1] += counted
    if lengths is not None:
        per_token = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="none"
        ).cpu()  # 0 where ignored
        targets = y.reshape(-1).cpu()
        size = lengths[targets.clamp(min=0)] * (targets != IGNORE_INDEX)
        sums[2] += per_token[size > 0].double().sum()
        sums[3] += size.sum()


def estimate_loss(
    model: nn.Module,
    sampler: BatchSampler,
    iters: int,
    precision: Precision,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Mean loss over ``iters`` fixed random batches (the same batches at every evaluation).

    ``loss``: the training step's own loss of ``(inputs, targets)`` where the family has one (a LoRA model's
    head applied at targets only: a training batch's whole logits are never held); else the logits'."""
    with grad_off(model):
        was_training = model.training
        model.eval()
        losses = []
        for i in range(iters):
            x, y = sampler.batch(i)
            x, y = x.to(precision.device), y.to(precision.device)
            with precision.autocast():
                losses.append(float(loss(x, y) if loss is not None else cross_entropy(model(x), y)))
        model.train(was_training)
        return sum(losses) / len(losses)
