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


@dataclass(frozen=True)
class TokenDataset:
    dataset_dir: Path
    meta: dict[str, Any]
    train: npt.NDArray[np.unsignedinteger[Any]]
    val: npt.NDArray[np.unsignedinteger[Any]]

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
    return TokenDataset(dataset_dir, meta, splits["train"], splits["val"])


class BatchSampler:
    """Random windows of ``block_size + 1`` tokens; the batch for a given step never changes."""

    def __init__(
        self,
        tokens: npt.NDArray[np.unsignedinteger[Any]],
        *,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(tokens) <= block_size:
            raise DataError(f"split has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1}")
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def batch(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int(np.random.SeedSequence([self.seed, step, micro_step]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        global_starts = torch.randint(
            len(self.tokens) - self.block_size, (self.batch_size * self.world_size,), generator=generator
        )
        starts = global_starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].numpy()
        rows = np.stack([self.tokens[s : s + self.block_size + 1] for s in starts]).astype(np.int64)
        window = torch.from_numpy(rows)
        return window[:, :-1], window[:, 1:]


def sequential_windows(
    tokens: npt.NDArray[np.unsignedinteger[Any]],
    block_size: int,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
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
        rows = np.stack([tokens[s : s + block_size + 1] for s in full[i : i + batch_size]]).astype(np.int64)
        window = torch.from_numpy(rows)
        yield window[:, :-1], window[:, 1:]
    if len(full) < len(starts) and len(batch_starts) % world_size == rank:
        tail = np.asarray(tokens[starts[-1] :], dtype=np.int64)
        window = torch.from_numpy(tail).unsqueeze(0)
        yield window[:, :-1], window[:, 1:]
