"""Token files on disk as memmaps, and a batch sampler that is a pure function of (seed, step).

Because batch ``k`` depends only on the seed and ``k``, resuming at step ``k`` needs no saved
iterator: the sampler's position is the step counter. Ranks of a distributed run draw disjoint
rows of the same global batch.

Datasets of records (speeches with a header) carry a record index beside the tokens
(``{split}_index.bin``: start, header length and length of each record). Their windows are
record-aware (``RecordWindows``): every window starts with a record's header, a long record is cut
into chunks that each repeat its header, and short records are packed whole into one window, so the
model never learns from text it cannot see the conditions of.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ml_playground.core.errors import DataError
from ml_playground.core.losses import IGNORE_INDEX as IGNORE_INDEX  # masked targets; re-exported
from ml_playground.data_pipeline.meta import read_meta

Tokens = npt.NDArray[np.unsignedinteger[Any]]
Mask = npt.NDArray[np.uint8]
Index = npt.NDArray[np.int64]  # (records, 3): first token, header tokens, all tokens of the record
INDEX_COLUMNS = 3
PAD_ID = 0  # fills a window's tail after its last record; never a target
LENGTH_STEP = 64  # a batch of whole records is cut to its longest one, rounded up to this (see RecordWindows)


@dataclass(frozen=True)
class TokenDataset:
    dataset_dir: Path
    meta: dict[str, Any]
    train: Tokens
    val: Tokens
    train_mask: Mask | None = None
    val_mask: Mask | None = None
    train_index: Index | None = None
    val_index: Index | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def whole_records(self) -> bool:
        """Conversations: one record per window, never cut, never beside another record."""
        return self.meta.get("record_windows") == "whole"


def open_dataset(dataset_dir: Path) -> TokenDataset:
    meta = read_meta(dataset_dir)
    splits = {}
    for split in ("train", "val"):
        path = dataset_dir / f"{split}.bin"
        if not path.is_file():
            raise DataError(f"{split}.bin is missing (run prepare again)", path=path)
        array = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
        if len(array) != meta[f"{split}_tokens"]:
            raise DataError(
                f"{split}.bin holds {len(array)} tokens, meta.json says {meta[f'{split}_tokens']} (run prepare again)",
                path=path,
            )
        splits[split] = array
    masks: dict[str, Mask | None] = {"train": None, "val": None}
    if meta.get("loss_mask"):
        for split in ("train", "val"):
            path = dataset_dir / f"{split}_mask.bin"
            if not path.is_file() or path.stat().st_size != len(splits[split]):
                raise DataError(
                    f"{split}_mask.bin is missing or does not match {split}.bin (run prepare again)", path=path
                )
            masks[split] = np.memmap(path, dtype=np.uint8, mode="r")
    indexes: dict[str, Index | None] = {"train": None, "val": None}
    if meta.get("conditioning") == "header" and not meta.get("record_index"):
        raise DataError(
            "dataset was prepared without a record index (an older layout); run prepare again",
            path=dataset_dir / "meta.json",
        )
    if meta.get("record_index"):
        for split in ("train", "val"):
            indexes[split] = _open_index(dataset_dir / f"{split}_index.bin", len(splits[split]))
    return TokenDataset(
        dataset_dir,
        meta,
        splits["train"],
        splits["val"],
        masks["train"],
        masks["val"],
        indexes["train"],
        indexes["val"],
    )


def _open_index(path: Path, n_tokens: int) -> Index:
    if not path.is_file() or path.stat().st_size % (8 * INDEX_COLUMNS):
        raise DataError("record index is missing or truncated (run prepare again)", path=path)
    index = np.fromfile(path, dtype=np.int64).reshape(-1, INDEX_COLUMNS)
    ends = index[:, 0] + index[:, 2]
    if len(index) == 0 or index[0, 0] != 0 or ends[-1] != n_tokens or np.any(index[1:, 0] != ends[:-1]):
        raise DataError("record index does not match the token file (run prepare again)", path=path)
    return index


class RecordWindows:
    """Windows of ``block_size + 1`` tokens that each start at a record's header.

    Each record's body (what follows its header) is cut into chunks of at most
    ``block_size + 1 - header`` tokens; a chunk with the record's header in front is a segment.
    Consecutive segments are packed greedily into windows; the tail of a window that no whole segment
    fits into is padding, which is never a target. So every body token is a target exactly once over
    all windows, always under its own record's header.

    ``whole``: every record is one window of its own (conversations: no target may see another
    conversation), and a batch is as long as its longest record, rounded up to ``LENGTH_STEP`` tokens;
    a record longer than a window is refused (prepare fits conversations to the window). The rounding
    keeps the number of distinct batch shapes small: every new shape makes oneDNN build (and cache)
    new bfloat16 kernels, and a chat run whose batches took 213 lengths grew to 18.5 GB of RSS with
    steps a third slower; rounded to 64 tokens the same step stays at 5.2 GB.
    """

    def __init__(self, tokens: Tokens, mask: Mask | None, index: Index, block_size: int, whole: bool = False) -> None:
        width = block_size + 1
        starts, headers, lengths = (index[:, column].astype(np.int64) for column in range(INDEX_COLUMNS))
        self.whole = whole
        if whole and np.any(lengths > width):
            record = int(np.flatnonzero(lengths > width)[0])
            raise DataError(
                f"conversation {record} has {int(lengths[record])} tokens, more than a window of block_size + 1 = "
                f"{width}; run prepare again with this block_size",
                key="train.model.block_size",
            )
        room = width - headers
        too_long = np.flatnonzero(room < 2)
        if too_long.size:
            record = int(too_long[0])
            raise DataError(
                f"record {record} has a header of {int(headers[record])} tokens, which leaves no room for text in a "
                f"window of block_size {block_size}; raise train.model.block_size or shorten the header",
                key="train.model.block_size",
            )
        bodies = np.maximum(lengths - headers, 0)
        chunks = np.maximum(-(-bodies // room), 1)
        record_of = np.repeat(np.arange(len(index)), chunks)
        chunk_of = np.arange(len(record_of)) - np.repeat(np.cumsum(chunks) - chunks, chunks)
        self.seg_header_start = starts[record_of]
        self.seg_header_len = headers[record_of]
        self.seg_body_start = starts[record_of] + headers[record_of] + chunk_of * room[record_of]
        self.seg_body_len = np.minimum(room[record_of], bodies[record_of] - chunk_of * room[record_of])
        used = self.seg_header_len + self.seg_body_len
        self.window_first = np.arange(len(used) + 1, dtype=np.int64) if whole else _pack(used, width)
        self.used = used  # tokens per segment; in whole mode a segment is a window
        self.tokens, self.mask, self.width = tokens, mask, width

    def __len__(self) -> int:
        return len(self.window_first) - 1

    def row(self, window: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """The window's tokens and which of them are targets (by the mask, never padding)."""
        ids = np.full(self.width, PAD_ID, dtype=np.int64)
        keep = np.zeros(self.width, dtype=np.bool_)
        at = 0
        for seg in range(int(self.window_first[window]), int(self.window_first[window + 1])):
            for start, length in (
                (int(self.seg_header_start[seg]), int(self.seg_header_len[seg])),
                (int(self.seg_body_start[seg]), int(self.seg_body_len[seg])),
            ):
                ids[at : at + length] = self.tokens[start : start + length]
                keep[at : at + length] = True if self.mask is None else self.mask[start : start + length] != 0
                at += length
        return ids, keep

    def batch(self, windows: Any) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.row(int(w)) for w in windows]
        ids = torch.from_numpy(np.stack([r[0] for r in rows]))
        keep = torch.from_numpy(np.stack([r[1] for r in rows]))
        if self.whole:  # little work on padding: the batch ends soon after its longest conversation
            longest = max(2, int(max(self.used[int(w)] for w in windows)))
            length = min(self.width, -(-longest // LENGTH_STEP) * LENGTH_STEP + 1)  # + 1: inputs and targets
            ids, keep = ids[:, :length], keep[:, :length]
        x, y = ids[:, :-1], ids[:, 1:]
        return x, y.masked_fill(~keep[:, 1:], IGNORE_INDEX)


def _evenly_spaced(count: int, max_targets: int | None, block_size: int) -> list[int]:
    """All of ``range(count)``, or about ``max_targets / block_size`` of them spread evenly over it."""
    if max_targets is None or count * block_size <= max_targets:
        return list(range(count))
    keep = max(1, max_targets // block_size)
    return sorted({int(i) for i in np.linspace(0, count - 1, keep)})


def _pack(lengths: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.int64]:
    """Greedy packing of consecutive segments into windows of ``width`` tokens: each window's first segment,
    plus the end."""
    firsts = [0]
    used = 0
    for seg, length in enumerate(lengths.tolist()):
        if used + length > width:
            firsts.append(seg)
            used = 0
        used += length
    firsts.append(len(lengths))
    return np.asarray(firsts, dtype=np.int64)


def _windows(tokens: Tokens, mask: Mask | None, starts: Any, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of the windows ``tokens[s : s + length + 1]``; masked targets become IGNORE_INDEX."""
    rows = torch.from_numpy(np.stack([tokens[s : s + length + 1] for s in starts]).astype(np.int64))
    x, y = rows[:, :-1], rows[:, 1:]
    if mask is not None:
        keep = torch.from_numpy(np.stack([mask[s + 1 : s + length + 1] for s in starts]).astype(np.bool_))
        y = y.masked_fill(~keep, IGNORE_INDEX)
    return x, y


class BatchSampler:
    """Random windows of ``block_size + 1`` tokens; the batch for a given step never changes."""

    def __init__(
        self,
        tokens: Tokens,
        *,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        mask: Mask | None = None,
        index: Index | None = None,
        whole: bool = False,
    ) -> None:
        self.records = RecordWindows(tokens, mask, index, block_size, whole) if index is not None else None
        if len(tokens) <= block_size and self.records is None:
            raise DataError(f"split has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1}")
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.mask = mask

    def batch(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int(np.random.SeedSequence([self.seed, step, micro_step]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        if self.records is not None:
            picks = torch.randint(len(self.records), (self.batch_size * self.world_size,), generator=generator)
            return self.records.batch(picks[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].numpy())
        global_starts = torch.randint(
            len(self.tokens) - self.block_size, (self.batch_size * self.world_size,), generator=generator
        )
        starts = global_starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].numpy()
        return _windows(self.tokens, self.mask, starts, self.block_size)


def sequential_windows(
    tokens: Tokens,
    block_size: int,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    mask: Mask | None = None,
    index: Index | None = None,
    max_targets: int | None = None,
    whole: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every next-token target of the split exactly once: non-overlapping windows; the last one ends at the end.

    With a record index, the record-aware windows in order (every body target once, headers repeated).
    With several ranks, batch ``b`` goes to rank ``b % world_size``; together they cover the split once.
    ``max_targets`` keeps about that many targets: the same evenly spaced whole windows every time.
    """
    if index is not None:
        records = RecordWindows(tokens, mask, index, block_size, whole)
        chosen = _evenly_spaced(len(records), max_targets, block_size)
        for number, first in enumerate(range(0, len(chosen), batch_size)):
            if number % world_size == rank:
                yield records.batch(chosen[first : first + batch_size])
        return
    n_targets = len(tokens) - 1
    starts = list(range(0, n_targets, block_size))
    full = [s for s in starts if s + block_size <= n_targets]
    if max_targets is not None and len(full) * block_size > max_targets:
        full = [full[i] for i in _evenly_spaced(len(full), max_targets, block_size)]
        starts = full  # the shorter last window is left out with the rest
    batch_starts = range(0, len(full), batch_size)
    for number, i in enumerate(batch_starts):
        if number % world_size != rank:
            continue
        yield _windows(tokens, mask, full[i : i + batch_size], block_size)
    if len(full) < len(starts) and len(batch_starts) % world_size == rank:
        yield _tail_window(tokens, mask, starts[-1], n_targets, block_size)


def _tail_window(
    tokens: Tokens, mask: Mask | None, first: int, n_targets: int, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The targets from ``first`` to the end, seen with the fullest context one window allows: the window of
    ``block_size`` that ends at the last target (its earlier targets, already scored, are ignored), or the
    shorter window from ``first`` when the split holds less than a block. How lm-evaluation-harness rolls too."""
    if n_targets < block_size:
        return _windows(tokens, mask, [first], n_targets - first)
    start = n_targets - block_size
    x, y = _windows(tokens, mask, [start], block_size)
    y = y.clone()  # a view of the same rows as x
    y[:, : first - start] = IGNORE_INDEX
    return x, y
