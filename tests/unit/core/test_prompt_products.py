"""Prompt products through oneDNN packs: the plain products at any number of rows, one pack a weight made at its
first use and again after the weight changed, plain where packing does not cover, and a choice measured once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ml_playground.core.packed_products import packing_available
from ml_playground.core.prompt_products import CACHE_FILE, PromptProducts, decide, measured_choice
from tests.product_helpers import Recording, weights

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not packing_available("onednn"), reason="this PyTorch build has no oneDNN pack"),
]


def test_prompt_products_are_the_plain_ones_at_any_number_of_rows_with_one_pack_a_weight() -> None:
    w, b = weights((48, 32), (48, 1))
    bias = b[:, 0].contiguous()
    plain = Recording()
    products = PromptProducts([w], plain=plain, choose=lambda ws: True)
    for rows in (3, 4, 7, 25, 100, 1):
        x = torch.randn(1, rows, 32)  # a prompt as the model's forward sees it: (batch, tokens, width)
        out = products(x, w, bias)
        torch.testing.assert_close(out, F.linear(x, w, bias), rtol=1e-5, atol=1e-5)
        assert out.shape == (1, rows, 48)
    assert plain.calls == 1  # one row (a stream's step, the last position's head) stays plain
    assert list(products.packs) == [id(w)]


def test_a_weight_changed_in_place_is_packed_again() -> None:
    (w,) = weights((16, 8))
    products = PromptProducts([w], choose=lambda ws: True)
    x = torch.randn(5, 8)
    products(x, w, None)
    first = products.packs[id(w)][0]
    with torch.no_grad():
        w.mul_(2.0)  # a LoRA merge, or a training step between serving
    torch.testing.assert_close(products(x, w, None), F.linear(x, w), rtol=1e-5, atol=1e-5)
    assert products.packs[id(w)][0] is not first


def test_what_packing_does_not_cover_takes_the_plain_product() -> None:
    w, other = weights((24, 16), (24, 16))
    plain = Recording()
    products = PromptProducts([w, w.bfloat16()], plain=plain, choose=lambda ws: True)
    x = torch.randn(6, 16)
    products(x, other, None)  # a weight it was not given
    products(x.bfloat16(), w.bfloat16(), None)  # not float32: never registered
    with torch.autocast("cpu", dtype=torch.bfloat16):
        products(x, w, None)  # autocast decides the product's precision
    assert plain.calls == 3
    assert not products.packs
    declined = PromptProducts([w], plain=plain, choose=lambda ws: False)
    declined(x, w, None)
    assert plain.calls == 4
    crowded = PromptProducts([w], plain=plain, choose=lambda ws: True, available=lambda: 4 * w.numel())
    crowded(x, w, None)  # one copy of the weights would take all the memory there is
    assert plain.calls == 5
    assert not crowded.packed


def test_the_choice_is_measured_once_and_kept(tmp_path: Path) -> None:
    ws = weights((96, 64), (64, 96))
    first = measured_choice(ws, F.linear, cache_dir=tmp_path)
    cached = json.loads((tmp_path / CACHE_FILE).read_text())
    (key,) = cached
    assert key.endswith("| linear | 32 rows")
    assert cached[key]["choice"] == ("onednn" if first else "plain")
    assert set(cached[key]["seconds"]) == {"plain", "onednn"}
    assert all(seconds > 0 for seconds in cached[key]["seconds"].values())
    cached[key]["choice"] = "plain" if first else "onednn"  # what the file says is the answer from now on
    (tmp_path / CACHE_FILE).write_text(json.dumps(cached))
    assert measured_choice(ws, F.linear, cache_dir=tmp_path) is not first


def test_packs_are_chosen_only_by_a_margin() -> None:
    assert decide({"plain": 1.0, "onednn": 0.5}) == "onednn"
    assert decide({"plain": 1.0, "onednn": 0.95}) == "plain"  # a near tie stays plain
    assert decide({"plain": 0.5, "onednn": 1.0}) == "plain"
