"""Token files on disk as memmaps, and a batch sampler that is a pure function of (seed, step).

Because batch ``k`` depends only on the seed and ``k``, resuming at step ``k`` needs no saved
iterator: the sampler's position is the step counter. Ranks of a distributed run draw disjoint
rows of the same global batch.
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
from ml_playground.data_pipeline.preparer import read_meta

IGNORE_INDEX = -100  # targets with this id are not in the loss (PyTorch's cross_entropy default)

Tokens = npt.NDArray[np.unsignedinteger[Any]]
Mask = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class TokenDataset:
    dataset_dir: Path
    meta: dict[str, Any]
    train: Tokens
    val: Tokens
    train_mask: Mask | None = None
    val_mask: Mask | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])


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
    return TokenDataset(dataset_dir, meta, splits["train"], splits["val"], masks["train"], masks["val"])


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
    ) -> None:
        if len(tokens) <= block_size:
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
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every next-token target of the split exactly once: non-overlapping windows, last one shorter.

    With several ranks, batch ``b`` goes to rank ``b % world_size``; together they cover the split once.
    """
    n_targets = len(tokens) - 1
    starts = list(range(0, n_targets, block_size))
    full = [s for s in starts if s + block_size <= n_targets]
    batch_starts = range(0, len(full), batch_size)
    for index, i in enumerate(batch_starts):
        if index % world_size != rank:
            continue
        yield _windows(tokens, mask, full[i : i + batch_size], block_size)
    if len(full) < len(starts) and len(batch_starts) % world_size == rank:
        yield _windows(tokens, mask, [starts[-1]], n_targets - starts[-1])
