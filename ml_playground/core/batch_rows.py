"""What every family's batch decoder shares: its streams as rows, who may join, and one draw per row a step.

A family's decoder (``families/gpt/batched.py``, ``families/hf_lora/batched.py``) keeps its own cache
and computes one step's logits for all rows; this base keeps the rows (each stream's handle, settings,
seeded generator and the token it feeds next), decides which streams the batch takes, and draws each
row's next token with the row's own settings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ml_playground.core.sampling_rules import SamplingParams, TokenSampler, draw_rows


@dataclass
class BatchRow:
    """One stream of a batch: its handle, its own sampler (settings, seeded generator, the tokens a repetition
    penalty counts), the token it feeds next."""

    handle: int
    sampler: TokenSampler
    last: int


class RowBatch(ABC):
    """Up to ``capacity`` streams whose whole answers fit in ``context_length`` tokens; ``logits()`` is the family's."""

    def __init__(self, capacity: int, context_length: int) -> None:
        self.capacity = capacity
        self.context_length = context_length
        self.rows: list[BatchRow] = []  # row i of the family's cache is self.rows[i]
        self.next_handle = 0

    def admits(self, prompt_tokens: int, params: SamplingParams, joining: int = 0) -> bool:
        """Whether a stream can join: a free row (beside ``joining`` streams already taken to be prefilled with
        it), no guidance, its whole answer inside the context."""
        return (
            len(self.rows) + joining < self.capacity
            and params.use_kv_cache
            and not params.guided
            and prompt_tokens > 0
            and prompt_tokens + params.max_new_tokens <= self.context_length
        )

    def __len__(self) -> int:
        return len(self.rows)

    def _join(self, params: SamplingParams, logits: torch.Tensor) -> tuple[int, int]:
        """A new last row whose prompt ended in ``logits`` (1, V): (its handle, its first token, drawn by its own
        sampler as the stream would be drawn alone)."""
        sampler = TokenSampler(params, logits.device)
        row = BatchRow(self.next_handle, sampler, int(sampler(logits)[0, 0]))
        self.next_handle += 1
        self.rows.append(row)
        return row.handle, row.last

    def _slot(self, handle: int) -> int:
        return next(i for i, row in enumerate(self.rows) if row.handle == handle)

    @abstractmethod
    def add(self, prompt_ids: list[int], params: SamplingParams) -> tuple[int, int]:
        """Prefill a new stream into the last row: (its handle, its first token)."""

    def add_many(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[tuple[int, int]]:
        """Prefill new streams that arrived together: (handle, first token) each, in order. Here one at a
        time (a failure takes back the rows added before it); a family may prefill them in one forward pass."""
        started: list[tuple[int, int]] = []
        try:
            for prompt, settings in zip(prompts, params, strict=True):
                started.append(self.add(prompt, settings))
        except Exception:
            for handle, _ in started:
                self.remove(handle)
            raise
        return started

    @abstractmethod
    def remove(self, handle: int) -> None:
        """The stream leaves (finished or cancelled)."""

    @abstractmethod
    def logits(self) -> torch.Tensor:
        """One step over every row: the next-token logits (rows, V) after each row's last token."""

    def step(self) -> dict[int, int]:
        """The next token of every stream, by handle: each the token the stream's own sampler draws (streams that
        share their settings drawn together, ``sampling_rules.py:draw_rows``)."""
        if not self.rows:
            return {}
        with torch.inference_mode():
            logits = self.logits()
        drawn: dict[int, int] = {}
        for row, token in zip(self.rows, draw_rows(logits, [row.sampler for row in self.rows]), strict=True):
            row.last = token
            drawn[row.handle] = token
        return drawn
