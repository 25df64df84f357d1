"""Products of one or two rows in row blocks: ``F.linear``'s results to float rounding, only where they apply,
and a choice per row count measured once per machine and kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ml_playground.core.row_products import CACHE_FILE, RowProducts, decide, in_blocks, measured_blocks
from tests.product_helpers import Recording, weights

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("blocks", [2, 4, 8])
@pytest.mark.parametrize("shape", [(1, 1, 40), (2, 1, 40), (2, 40), (3, 40)])
def test_blocks_compute_the_plain_product(blocks: int, shape: tuple[int, ...]) -> None:
    w, b, x = weights((96, 40), (96,), shape)
    for bias in (None, b):
        for rows in (x, x.transpose(0, -2)):  # laid out plainly, and not contiguous
            out = in_blocks(rows, w, bias, blocks)
            assert out.shape == (*rows.shape[:-1], 96)
            torch.testing.assert_close(out, F.linear(rows, w, bias), rtol=1e-5, atol=1e-5)


def test_only_the_rows_and_weights_it_was_given_take_the_blocks() -> None:
    w, uneven, other = weights((64, 16), (65, 16), (64, 16))
    plain = Recording()
    products = RowProducts([w, uneven, w.bfloat16()], blocks={1: 4, 2: 8}, plain=plain)
    row, pair = torch.randn(1, 1, 16), torch.randn(2, 1, 16)
    torch.testing.assert_close(products(row, w, None), F.linear(row, w), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(products(pair, w, None), F.linear(pair, w), rtol=1e-5, atol=1e-5)
    assert plain.calls == 0
    products(row, uneven, None)  # 65 rows do not split into 4 blocks
    products(row, other, None)  # a weight it was not given
    products(torch.randn(3, 1, 16), w, None)  # three rows: the batch's product
    products(row.bfloat16(), w.bfloat16(), None)  # not float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        products(row, w, None)  # autocast decides the product's precision
    assert plain.calls == 5
    one_row_only = RowProducts([w], blocks={1: 4, 2: 1}, plain=plain)
    one_row_only(row, w, None)
    assert plain.calls == 5
    one_row_only(pair, w, None)  # two rows measured faster plain
    assert plain.calls == 6


def test_blocks_are_chosen_only_by_a_margin() -> None:
    assert decide({"1": 1.0, "2": 0.5, "4": 0.4, "8": 0.6}) == "4"
    assert decide({"1": 1.0, "2": 0.95, "4": 0.97, "8": 0.99}) == "1"  # a near tie stays plain


def test_the_choice_is_measured_once_per_row_count_and_kept(tmp_path: Path) -> None:
    ws = weights((96, 64), (64, 96))
    first = measured_blocks(ws, cache_dir=tmp_path)
    cached = json.loads((tmp_path / CACHE_FILE).read_text())
    keys = {key.rsplit("| ", 1)[1]: key for key in cached}
    assert set(keys) == {"1 row", "2 rows"}
    assert first == {1: int(cached[keys["1 row"]]["choice"]), 2: int(cached[keys["2 rows"]]["choice"])}
    for entry in cached.values():
        assert set(entry["seconds"]) == {"1", "2", "4", "8"}
        assert all(seconds > 0 for seconds in entry["seconds"].values())
    cached[keys["2 rows"]]["choice"] = "8" if first[2] != 8 else "2"  # what the file says is the answer from now on
    (tmp_path / CACHE_FILE).write_text(json.dumps(cached))
    assert measured_blocks(ws, cache_dir=tmp_path) == {1: first[1], 2: int(cached[keys["2 rows"]]["choice"])}
    assert measured_blocks([w.bfloat16() for w in ws], cache_dir=tmp_path) == {1: 1, 2: 1}  # nothing it measures
