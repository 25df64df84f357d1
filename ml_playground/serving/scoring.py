"""Log-probabilities of given tokens under the served model: what ``logprobs`` and ``echo`` return.

The sequence (prompt, plus the completion when there is one) goes through the family's
``InferenceModel.module`` in the windows ``eval`` scores text with (``sequential_windows``: one pass
when it fits the context, else non-overlapping windows of the context, the last one ending at the
end). So an echoed prompt's log-probabilities are exactly our evaluation's per-token losses, negated,
for any length. The first token has none (nothing precedes it). This is what lm-evaluation-harness
reads from ``/v1/completions`` with ``echo: true, logprobs: 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ml_playground.core.sampling_rules import grad_off
from ml_playground.data_pipeline.batches import IGNORE_INDEX, sequential_windows
from ml_playground.families.base import InferenceModel

MAX_TOP_LOGPROBS = 5


@dataclass(frozen=True)
class TokenScores:
    """Per token of the sequence: its log-probability and the ``top`` likeliest tokens at its place."""

    ids: list[int]
    logprobs: list[float | None]  # None for the first token
    top: list[list[tuple[int, float]] | None]  # None for the first token; [] when top = 0


def score_tokens(model: InferenceModel, ids: Sequence[int], top: int) -> TokenScores:
    """``ids`` scored left to right, window by window (one window at a time bounds the memory)."""
    chosen: list[float | None] = [None]
    tops: list[list[tuple[int, float]] | None] = [None]
    windows = sequential_windows(np.asarray(ids, dtype=np.uint32), model.context_length, batch_size=1)
    with grad_off(model.module):
        for x, y in windows:
            keep = y[0] != IGNORE_INDEX
            logits = model.module(x.to(model.device))[0, keep].float()
            targets = y[0, keep].to(logits.device)
            logprobs = torch.log_softmax(logits, dim=-1)
            chosen += logprobs.gather(1, targets[:, None])[:, 0].tolist()
            if top > 0:
                values, indices = torch.topk(logprobs, min(top, logprobs.size(-1)), dim=-1)
                tops += [
                    list(zip(row_ids, row_values, strict=True))
                    for row_ids, row_values in zip(indices.tolist(), values.tolist(), strict=True)
                ]
            else:
                tops += [[] for _ in range(len(targets))]
    return TokenScores(list(ids), chosen, tops)
