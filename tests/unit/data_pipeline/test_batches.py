from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.batches import (
    IGNORE_INDEX,
    BatchSampler,
    RecordWindows,
    open_dataset,
    sequential_windows,
)
from ml_playground.data_pipeline.preparer import prepare

pytestmark = pytest.mark.unit

TOKENS = np.arange(1000, dtype=np.uint16)


def test_batches_are_a_function_of_seed_and_step() -> None:
    a = BatchSampler(TOKENS, block_size=8, batch_size=4, seed=1)
    b = BatchSampler(TOKENS, block_size=8, batch_size=4, seed=1)
    x1, y1 = a.batch(5, 0)
    a.batch(6)
    x2, y2 = b.batch(5, 0)
    assert torch.equal(x1, x2)
    assert torch.equal(y1, y2)
    assert torch.equal(y1[:, :-1], x1[:, 1:])  # targets are inputs shifted by one
    assert not torch.equal(a.batch(5, 1)[0], x1)
    assert not torch.equal(BatchSampler(TOKENS, block_size=8, batch_size=4, seed=2).batch(5)[0], x1)


def test_ranks_split_the_global_batch() -> None:
    whole = BatchSampler(TOKENS, block_size=8, batch_size=6, seed=3)
    ranks = [BatchSampler(TOKENS, block_size=8, batch_size=3, seed=3, rank=r, world_size=2) for r in range(2)]
    x, _ = whole.batch(7)
    assert torch.equal(torch.cat([r.batch(7)[0] for r in ranks]), x)


def scored(y: torch.Tensor) -> list[int]:
    return [t for t in y.reshape(-1).tolist() if t != IGNORE_INDEX]


def test_sequential_windows_cover_every_target_once() -> None:
    tokens = np.arange(103, dtype=np.uint16)
    windows = list(sequential_windows(tokens, block_size=10, batch_size=3))
    assert [t for _, y in windows for t in scored(y)] == list(range(1, 103))
    short = list(sequential_windows(np.arange(5, dtype=np.uint16), block_size=10, batch_size=3))
    assert [y.tolist() for _, y in short] == [[[1, 2, 3, 4]]]


def test_the_last_window_sees_a_whole_block_of_context() -> None:
    """The two targets left after ten full windows are scored from the window that ends at the last token
    (as lm-evaluation-harness's rolling windows score them), not from a two-token window."""
    x, y = list(sequential_windows(np.arange(103, dtype=np.uint16), block_size=10, batch_size=20))[-1]
    assert x.tolist() == [list(range(92, 102))]
    assert y.tolist() == [[IGNORE_INDEX] * 8 + [101, 102]]


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_ranks_share_the_sequential_windows_without_overlap(world_size: int) -> None:
    tokens = np.arange(103, dtype=np.uint16)
    shares = [
        torch.tensor(
            [t for _, y in sequential_windows(tokens, 10, 3, rank=r, world_size=world_size) for t in scored(y)]
        )
        if list(sequential_windows(tokens, 10, 3, rank=r, world_size=world_size))
        else torch.empty(0, dtype=torch.long)
        for r in range(world_size)
    ]
    assert sorted(torch.cat(shares).tolist()) == list(range(1, 103))


def test_split_shorter_than_a_block_is_refused() -> None:
    with pytest.raises(DataError, match="fewer than block_size"):
        BatchSampler(TOKENS[:8], block_size=8, batch_size=1, seed=0)


def test_open_dataset_checks_files_against_meta(tmp_path: Path, shakespeare_slice: Path) -> None:
    prepare(PrepareConfig(input_path=str(shakespeare_slice), dataset_dir=tmp_path / "ds"))
    dataset = open_dataset(tmp_path / "ds")
    assert dataset.vocab_size == dataset.meta["vocab_size"]
    assert len(dataset.train) == dataset.meta["train_tokens"]
    (tmp_path / "ds" / "val.bin").write_bytes(b"\x01\x00" * 3)
    with pytest.raises(DataError, match=r"val.bin holds 3 tokens"):
        open_dataset(tmp_path / "ds")
    (tmp_path / "ds" / "train.bin").unlink()
    with pytest.raises(DataError, match=r"train.bin is missing"):
        open_dataset(tmp_path / "ds")
    with pytest.raises(DataError, match="no prepared dataset"):
        open_dataset(tmp_path / "elsewhere")
    (tmp_path / "ds" / "meta.json").write_text("{")
    with pytest.raises(DataError, match="unreadable dataset metadata"):
        open_dataset(tmp_path / "ds")


def test_a_batch_of_whole_records_is_cut_to_a_few_lengths_only() -> None:
    """Rounded up to LENGTH_STEP after the longest record (few shapes for the kernels' caches), never past a
    window, and the padding is never a target."""
    lengths = [70, 130, 20, 200]
    index = np.array([[sum(lengths[:i]), 3, n] for i, n in enumerate(lengths)], dtype=np.int64)
    tokens = np.arange(1, sum(lengths) + 1, dtype=np.uint32)
    windows = RecordWindows(tokens, None, index, block_size=200, whole=True)
    for picks, expected in (([0], 128), ([0, 2], 128), ([1], 192), ([2], 64), ([3], 200)):
        x, y = windows.batch(np.array(picks))
        assert x.shape == (len(picks), expected)
        longest = max(lengths[p] for p in picks)
        assert (y[:, longest - 1 :] == IGNORE_INDEX).all()
        assert (y[0, 3 : lengths[picks[0]] - 1] != IGNORE_INDEX).all()
