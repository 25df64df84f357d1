"""The batch decoders' KV cache: rows of their own lengths, written in place, grown on demand."""

from __future__ import annotations

import pytest
import torch

from ml_playground.core.row_cache import RowCache

pytestmark = pytest.mark.unit


def cache(columns: int = 2, limit: int = 16) -> RowCache:
    return RowCache(2, 3, 2, 4, columns=columns, limit=limit, dtype=torch.float32, device=torch.device("cpu"))


def prompt(length: int, value: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((2, length, 4), value), torch.full((2, length, 4), -value)) for _ in range(2)]


def test_rows_keep_their_columns_as_the_buffers_grow_and_a_step_writes_each_rows_next_column() -> None:
    rows = cache()
    rows.put(0, prompt(3, 1.0))  # more than the first room: doubled to 4
    rows.put(1, prompt(1, 2.0))
    assert rows.columns == 4
    step = rows.step(2, torch.float32)
    assert step.positions.tolist() == [3, 1]
    assert step.span == 4  # the longest row's columns, its new one included
    with torch.inference_mode():  # as a decode step runs
        keys, values = rows.extend(0, step, torch.full((2, 2, 4), 5.0), torch.full((2, 2, 4), 6.0))
        rows.advance(2)
    assert keys.shape == (2, 2, 4, 4)
    assert keys[0, :, :3].eq(1.0).all()
    assert keys[0, :, 3].eq(5.0).all()
    assert keys[1, :, 0].eq(2.0).all()
    assert keys[1, :, 1].eq(5.0).all()
    assert values[1, :, 1].eq(6.0).all()
    assert step.mask is not None
    assert step.mask[:, 0, 0].isinf().tolist() == [[False] * 4, [False, False, True, True]]  # row 1 sees its 2
    assert rows.step(1, torch.float32).mask is None  # one row: nothing to hide; it needs a fifth column:
    assert rows.columns == 8  # doubled to 8, contents kept
    assert rows.keys[0][0, :, 3].eq(5.0).all()


def test_the_last_row_moves_into_a_freed_slot() -> None:
    rows = cache(columns=8)
    rows.put(0, prompt(2, 1.0))
    rows.put(1, prompt(5, 3.0))
    rows.move(1, 0)
    assert rows.lengths[0] == 5
    assert rows.keys[1][0, :, :5].eq(3.0).all()
    assert rows.values[0][0, :, :5].eq(-3.0).all()


def test_a_row_past_the_context_is_refused() -> None:
    rows = cache(limit=6)
    rows.put(0, prompt(6, 1.0))
    assert rows.columns == 6  # doubling stops at the limit
    with pytest.raises(ValueError, match="context length 6"):
        rows.step(1, torch.float32)


def test_room_the_rows_left_do_not_need_is_given_back() -> None:
    rows = cache(columns=2, limit=64)
    rows.put(0, prompt(3, 1.0))
    rows.put(1, prompt(30, 2.0))  # grows to 32 columns
    assert rows.columns == 32
    rows.shrink(2)
    assert rows.columns == 32  # the long row still needs them
    rows.move(1, 0)
    rows.put(1, prompt(3, 4.0))
    rows.move(1, 0)  # the long row has left; a short one holds slot 0
    rows.shrink(1)
    assert rows.columns == 8  # halved while a quarter still holds 3 columns; its columns kept
    assert rows.keys[0][0, :, :3].eq(4.0).all()
    rows.shrink(0)
    assert rows.columns == 2  # an empty batch: back to the first room
