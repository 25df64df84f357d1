"""Log-probabilities of given tokens under the served model: what ``logprobs`` and ``echo`` return.

One forward pass over the whole sequence (prompt, plus the completion when there is one), through
the family's ``InferenceModel.module``: the same logits ``eval`` scores with, so an echoed prompt's
log-probabilities are exactly our evaluation's per-token losses, negated. The first token has none
(nothing precedes it). This is what lm-evaluation-harness reads from ``/v1/completions`` with
``echo: true, max_tokens: 0, logprobs: 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ml_playground.core.sampling_rules import grad_off
from ml_playground.families.base import InferenceModel

MAX_TOP_LOGPROBS = 5


@dataclass(frozen=True)
class TokenScores:
    """Per token of the sequence: its log-probability and the ``top`` likeliest tokens at its place."""

    ids: list[int]
    logprobs: list[float | None]  # None for the first token
    top: list[list[tuple[int, float]] | None]  # None for the first token; [] when top = 0


def score_tokens(model: InferenceModel, ids: Sequence[int], top: int) -> TokenScores:
    """``ids`` scored left to right in one pass; at most ``model.context_length`` of them (checked by the caller)."""
    tokens = torch.tensor([list(ids)], dtype=torch.long, device=model.device)
    with grad_off(model.module):
        logits = model.module(tokens)[0, :-1].float()  # (T - 1, V): the prediction for each next token
    logprobs = torch.log_softmax(logits, dim=-1)
    chosen = logprobs.gather(1, tokens[0, 1:, None])[:, 0].tolist()
    tops: list[list[tuple[int, float]] | None] = [None]
    if top > 0:
        values, indices = torch.topk(logprobs, min(top, logprobs.size(-1)), dim=-1)
        tops += [
            list(zip(row_ids, row_values, strict=True))
            for row_ids, row_values in zip(indices.tolist(), values.tolist(), strict=True)
        ]
    else:
        tops += [[] for _ in range(len(ids) - 1)]
    return TokenScores(list(ids), [None, *chosen], tops)
