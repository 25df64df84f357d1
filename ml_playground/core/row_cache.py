"""The KV cache of a batch decoder: each stream a row with its own length, every layer's keys and values.

A decode step feeds every row's last token at the row's own position. Each layer's keys and values are
one buffer (rows, heads, columns, head_dim); a step writes each row's new column in place (one
``index_copy_`` per layer for all rows) and attention reads the first ``span`` columns of the first
``n`` rows as views, with a mask that hides each row's columns past its own length. Rows stay packed at
the front: a stream that leaves has its slot filled by the last row.

Buffers are made and written in inference mode (a stream may join outside it, steps run inside it).
The buffers start with room for ``columns`` and grow (doubling, up to ``limit``) when a row would need
more, so a model with a long context does not reserve it all for every row up front; ``shrink`` gives
the room back when the long rows have left. ``CachedRows`` is a batch decoder whose rows live in one
(both families' batch decoders).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ml_playground.core.batch_rows import RowBatch


@dataclass(frozen=True)
class RowStep:
    """One decode step of the first rows: each row's new position, where its keys and values go, the columns to
    attend to (``span``: the longest row's) and the additive mask (n, 1, 1, span) that hides each row's columns
    past its own position (None for one row)."""

    positions: torch.Tensor
    targets: torch.Tensor
    span: int
    mask: torch.Tensor | None


class RowCache:
    """Keys and values of up to ``capacity`` rows for ``layers`` layers of ``heads`` heads of ``head_dim``."""

    def __init__(
        self,
        layers: int,
        capacity: int,
        heads: int,
        head_dim: int,
        *,
        columns: int,
        limit: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.capacity, self.heads, self.head_dim, self.limit = capacity, heads, head_dim, limit
        self.columns = self.first = min(columns, limit)
        shape = (capacity, heads, self.columns, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.lengths = torch.zeros(capacity, dtype=torch.long, device=device)

    @torch.inference_mode()
    def reserve(self, columns: int) -> None:
        """Room for ``columns`` columns in every row (the buffers double until they hold them)."""
        if columns > self.limit:
            raise ValueError(f"a row would exceed the context length {self.limit}")
        if columns <= self.columns:
            return
        grown = self.columns
        while grown < columns:
            grown *= 2
        self._resize(min(grown, self.limit), self.columns)

    def shrink(self, n: int) -> None:
        """Give back room the first ``n`` rows (those left) do not need: the buffers halve while a quarter of them
        would still hold the longest row, down to the first room. A server keeps its cache for its lifetime, so
        one long answer must not hold every row's room at its length once it has left."""
        longest = int(self.lengths[:n].max()) if n else 0
        columns = self.columns
        while columns // 2 >= self.first and longest * 4 <= columns:
            columns //= 2
        if columns < self.columns:
            self._resize(columns, longest)

    @torch.inference_mode()
    def _resize(self, columns: int, keep: int) -> None:
        """New buffers of ``columns`` columns holding the first ``keep`` columns of the old ones."""
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                new = old.new_zeros((self.capacity, self.heads, columns, self.head_dim))
                new[:, :, :keep] = old[:, :, :keep]
                buffers[i] = new
        self.columns = columns

    @torch.inference_mode()
    def put(self, slot: int, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """A prefilled prompt into row ``slot``: each layer's keys and values (heads, length, head_dim)."""
        length = layers[0][0].size(-2)
        self.reserve(length)
        for (keys, values), key_buffer, value_buffer in zip(layers, self.keys, self.values, strict=True):
            key_buffer[slot, :, :length] = keys
            value_buffer[slot, :, :length] = values
        self.lengths[slot] = length

    @torch.inference_mode()
    def move(self, source: int, target: int) -> None:
        """Row ``source`` into slot ``target`` (the last row filling the slot of one that left)."""
        length = int(self.lengths[source])
        for buffers in (self.keys, self.values):
            for buffer in buffers:
                buffer[target, :, :length] = buffer[source, :, :length]
        self.lengths[target] = self.lengths[source]

    def step(self, n: int, dtype: torch.dtype) -> RowStep:
        """Where a decode step of the first ``n`` rows writes and what it reads, with room made for its columns."""
        positions = self.lengths[:n].clone()
        span = int(positions.max()) + 1
        self.reserve(span)
        # Each row's and head's new column in a layer's buffer seen as (rows * heads * columns, head_dim), one index
        # for every layer (``index_copy_``: 7 against 11 us a call for one row, 10 against 14 for eight, than
        # ``buffer[rows, :, positions] =`` on a 2-core AMD EPYC).
        heads = torch.arange(n * self.heads, device=positions.device).view(n, self.heads)
        targets = (heads * self.columns + positions.view(n, 1)).view(n * self.heads)
        mask = None  # one row sees every column up to its own length
        if n > 1:
            visible = (torch.arange(span, device=positions.device).view(1, span) <= positions.view(n, 1)).view(
                n, 1, 1, span
            )
            mask = torch.zeros(visible.shape, dtype=dtype, device=positions.device).masked_fill_(
                ~visible, float("-inf")
            )
        return RowStep(positions, targets, span, mask)

    def extend(
        self, layer: int, step: RowStep, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the step's keys and values (n, heads, head_dim) of ``layer``; the columns of the ``n`` rows to
        attend to."""
        n = keys.size(0)
        key_buffer, value_buffer = self.keys[layer], self.values[layer]
        key_buffer.view(-1, self.head_dim).index_copy_(0, step.targets, keys.reshape(n * self.heads, self.head_dim))
        value_buffer.view(-1, self.head_dim).index_copy_(0, step.targets, values.reshape(n * self.heads, self.head_dim))
        return key_buffer[:n, :, : step.span], value_buffer[:n, :, : step.span]

    def advance(self, n: int) -> None:
        """Each of the first ``n`` rows holds one more column."""
        self.lengths[:n] += 1


class CachedRows(RowBatch):
    """A batch decoder whose rows live in ``self.cache``: a stream that leaves has its slot filled by the last row,
    and the room the rows left do not need is given back."""

    cache: RowCache

    def remove(self, handle: int) -> None:
        """The stream leaves; the last row moves into its slot."""
        slot = self._slot(handle)
        last = len(self.rows) - 1
        if slot != last:
            self.cache.move(last, slot)
            self.rows[slot] = self.rows[last]
        self.rows.pop()
        self.cache.shrink(len(self.rows))
