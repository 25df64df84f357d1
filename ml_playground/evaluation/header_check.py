"""Does a header-conditioned model read the party in its header? Its own likelihood of real speeches says.

Held-out speeches the model did not train on are scored, the first ``text_tokens`` tokens of each,
after the header of every party (the speech's own year, no speaker, no topic). A model that has learned
how a party speaks finds a speech most likely under its own party's header. Reported: the share of
speeches for which it does (chance is 1 / parties), and the mean gain of the true header over the
others in nats per token. A gain near zero means the model does not read the party: no sampling
setting can then make its samples sound like the party asked for, guidance included (guidance reads
these same likelihoods).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.data_pipeline.header import format_header
from ml_playground.data_pipeline.sources.records import SpeechRecord

MIN_TEXT_TOKENS = 8  # fewer tokens of a speech say too little about who gave it


@dataclass(frozen=True)
class HeaderCheck:
    """The model's own party choice for held-out real speeches, from its likelihood under each header."""

    speeches: int
    text_tokens: int
    own_party_share: float
    gain_nats_per_token: float
    per_party: dict[str, float] = field(default_factory=dict)  # own-party share by party, where it has speeches


def header_scores(module: nn.Module, prompts: Sequence[list[int]], text: list[int]) -> list[float]:
    """The log-likelihood of ``text`` after each prompt, in one forward pass (rows padded on the right, which
    a causal model never attends to)."""
    device = next(module.parameters()).device
    width = max(len(p) for p in prompts) + len(text)
    rows = [p + text + [text[-1]] * (width - len(p) - len(text)) for p in prompts]
    with torch.no_grad():
        logits = module(torch.tensor(rows, device=device)).float()
    targets = torch.tensor(text, device=device)
    return [
        -F.cross_entropy(logits[row, len(p) - 1 : len(p) - 1 + len(text)], targets, reduction="sum").item()
        for row, p in enumerate(prompts)
    ]


def check_header(
    module: nn.Module,
    tokenizer: Tokenizer,
    records: Sequence[SpeechRecord],
    parties: list[str],
    per_party: int,
    context_length: int,
    text_tokens: int = 128,
) -> HeaderCheck:
    """Up to ``per_party`` speeches of each party from ``records`` (held out), each scored under every
    party's header; ``module(ids)`` gives logits."""
    chosen: dict[str, list[tuple[int, list[float]]]] = {party: [] for party in parties}
    for record in records:
        bucket = chosen.get(record.party)
        if bucket is None or len(bucket) >= per_party:
            continue
        headers = [tokenizer.encode(format_header({"party": p, "year": record.year})) for p in parties]
        room = min(text_tokens, context_length - max(len(h) for h in headers))
        text = tokenizer.encode(record.text.strip())[:room]
        if len(text) >= MIN_TEXT_TOKENS:
            bucket.append((len(text), header_scores(module, headers, text)))
    hits: dict[str, list[bool]] = {}
    gains: list[float] = []
    for party, scored in chosen.items():
        own = parties.index(party)
        for length, scores in scored:
            others = [s for i, s in enumerate(scores) if i != own]
            hits.setdefault(party, []).append(max(range(len(scores)), key=scores.__getitem__) == own)
            gains.append((scores[own] - sum(others) / len(others)) / length)
    flat = [hit for party_hits in hits.values() for hit in party_hits]
    return HeaderCheck(
        speeches=len(flat),
        text_tokens=text_tokens,
        own_party_share=sum(flat) / len(flat) if flat else 0.0,
        gain_nats_per_token=sum(gains) / len(gains) if gains else 0.0,
        per_party={party: sum(h) / len(h) for party, h in hits.items()},
    )
