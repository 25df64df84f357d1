"""One-row products in row blocks: ``F.linear``'s results to float rounding, only where they apply, and a
choice measured once per machine and kept."""

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
def test_blocks_compute_the_plain_product(blocks: int) -> None:
    w, b, x = weights((96, 40), (96,), (1, 1, 40))
    for bias in (None, b):
        out = in_blocks(x, w, bias, blocks)
        assert out.shape == (1, 1, 96)
        torch.testing.assert_close(out, F.linear(x, w, bias), rtol=1e-5, atol=1e-5)


def test_only_one_row_by_a_weight_it_was_given_takes_the_blocks() -> None:
    w, uneven, other = weights((64, 16), (65, 16), (64, 16))
    plain = Recording()
    products = RowProducts([w, uneven, w.bfloat16()], blocks=4, plain=plain)
    row = torch.randn(1, 1, 16)
    torch.testing.assert_close(products(row, w, None), F.linear(row, w), rtol=1e-5, atol=1e-5)
    assert plain.calls == 0
    products(row, uneven, None)  # 65 rows do not split into 4 blocks
    products(row, other, None)  # a weight it was not given
    products(torch.randn(2, 1, 16), w, None)  # two rows: the batch's product
    products(row.bfloat16(), w.bfloat16(), None)  # not float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        products(row, w, None)  # autocast decides the product's precision
    assert plain.calls == 5
    unblocked = RowProducts([w], blocks=1, plain=plain)
    unblocked(row, w, None)
    assert plain.calls == 6


def test_blocks_are_chosen_only_by_a_margin() -> None:
    assert decide({"1": 1.0, "2": 0.5, "4": 0.4, "8": 0.6}) == "4"
    assert decide({"1": 1.0, "2": 0.95, "4": 0.97, "8": 0.99}) == "1"  # a near tie stays plain


def test_the_choice_is_measured_once_and_kept(tmp_path: Path) -> None:
    ws = weights((96, 64), (64, 96))
    first = measured_blocks(ws, cache_dir=tmp_path)
    cached = json.loads((tmp_path / CACHE_FILE).read_text())
    (key,) = cached
    assert key.endswith("| 1 row")
    assert cached[key]["choice"] == str(first)
    assert set(cached[key]["seconds"]) == {"1", "2", "4", "8"}
    assert all(seconds > 0 for seconds in cached[key]["seconds"].values())
    cached[key]["choice"] = "8" if first != 8 else "2"  # what the file says is the answer from now on
    (tmp_path / CACHE_FILE).write_text(json.dumps(cached))
    assert measured_blocks(ws, cache_dir=tmp_path) == int(cached[key]["choice"])
    assert measured_blocks([w.bfloat16() for w in ws], cache_dir=tmp_path) == 1  # nothing it measures
