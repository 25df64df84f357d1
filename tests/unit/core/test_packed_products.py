"""Decode products with packed weights: the same products as ``F.linear``, a row's result independent of its
neighbours, packs that follow the batch's rows and the weights' versions, and a choice measured once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ml_playground.core.packed_products import (
    CACHE_FILE,
    PACKS,
    Method,
    PackedProducts,
    band_for,
    decide,
    linear_layers,
    measured_chooser,
    packing_available,
    routed,
)
from tests.product_helpers import Recording, weights

AVAILABLE: list[Method] = [method for method in PACKS if packing_available(method)]
pytestmark = [pytest.mark.unit, pytest.mark.skipif(not AVAILABLE, reason="this PyTorch build has no packed product")]
METHODS = pytest.mark.parametrize("method", AVAILABLE)


def test_bands_are_powers_of_two_from_four() -> None:
    assert [band_for(rows) for rows in (1, 3, 4, 5, 8, 9, 17, 32)] == [4, 4, 4, 8, 8, 16, 32, 32]
    assert PackedProducts(weights((8, 4)), 8, choose=lambda band: "mkl").bands() == [4, 8]
    assert PackedProducts(weights((8, 4)), 2, choose=lambda band: "mkl").bands() == []  # never three rows


@METHODS
def test_packed_products_are_the_plain_ones_at_every_row_count_as_the_band_grows_and_shrinks(method: Method) -> None:
    w, b = weights((48, 32), (48, 1))
    bias = b[:, 0].contiguous()
    plain = Recording()
    products = PackedProducts([w], capacity=16, plain=plain, choose=lambda band: method)
    seen = []
    for rows in (1, 2, 3, 4, 5, 8, 16, 9, 8, 5, 4, 3, 2):
        x = torch.randn(rows, 1, 32)
        out = products(x, w, bias)
        torch.testing.assert_close(out, F.linear(x, w, bias), rtol=1e-5, atol=1e-5)
        assert out.shape == (rows, 1, 48)
        seen.append(products.band)
    # One or two rows stay plain (the band used last stays); the band grows at once and shrinks once the rows
    # fit a quarter of it, or at once to a band whose packs are still held.
    assert seen == [0, 0, 4, 4, 8, 8, 16, 16, 8, 8, 4, 4, 4]
    assert plain.calls == 3
    assert sorted(products.sets) == [4, 8, 16]  # each band's packs kept: room for many copies of this weight
    assert all(len(packs) == 1 for packs in products.sets.values())


@METHODS
def test_a_swinging_batch_packs_each_band_once_within_the_memory_room(method: Method) -> None:
    (w,) = weights((64, 64))  # 16 KiB: room for two sets of packs in 128 KiB (a quarter of it: 32 KiB)
    products = PackedProducts([w], capacity=32, choose=lambda band: method, available=lambda: 128 * 1024)
    assert products.max_sets == 2
    made: list[torch.Tensor] = []
    bands = []
    for rows in (16, 3, 16, 3, 5, 17):
        x = torch.randn(rows, 64)
        torch.testing.assert_close(products(x, w, None), F.linear(x, w), rtol=1e-5, atol=1e-5)
        bands.append(products.band)
        pack = products.sets[products.band][id(w)][0]
        if all(pack is not seen for seen in made):
            made.append(pack)
    # 16 -> 4 -> back to 16 and 4 use the packs made for them; 5 rows run at 16 (held: no new set), and 17 make
    # a set at 32, for which the least recently used set (4) gives way
    assert bands == [16, 4, 16, 4, 16, 32]
    assert len(made) == 3
    assert list(products.sets) == [16, 32]


@METHODS
def test_a_rows_result_does_not_depend_on_its_neighbours(method: Method) -> None:
    (w,) = weights((64, 32))
    products = PackedProducts([w], capacity=8, choose=lambda band: method)
    x = torch.randn(8, 32)
    together = products(x, w, None)
    assert torch.equal(products(x[:5], w, None), together[:5])  # padded with zeros instead of three rows
    assert torch.equal(products(torch.cat([x[:5], torch.randn(3, 32)]), w, None)[:5], together[:5])


@METHODS
def test_a_weight_changed_in_place_is_packed_again(method: Method) -> None:
    (w,) = weights((24, 16))
    products = PackedProducts([w], capacity=4, choose=lambda band: method)
    x = torch.randn(4, 16)
    products(x, w, None)
    with torch.no_grad():
        w.mul_(2.0)
    torch.testing.assert_close(products(x, w, None), F.linear(x, w), rtol=1e-5, atol=1e-5)
    products.release()
    assert products.band == 0
    assert not products.sets


def test_what_packing_does_not_cover_takes_the_plain_product() -> None:
    w, other = weights((24, 16), (24, 16))
    plain = Recording()
    products = PackedProducts([w, w.bfloat16()], capacity=8, plain=plain, choose=lambda band: AVAILABLE[0])
    x = torch.randn(4, 16)
    products(x, other, None)  # a weight it was not given
    products(x.bfloat16(), w.bfloat16(), None)  # not float32: never registered
    products(torch.randn(9, 16), w, None)  # more rows than the batch holds
    with torch.autocast("cpu", dtype=torch.bfloat16):
        products(x, w, None)  # autocast decides the product's precision
    assert plain.calls == 4
    declined = Recording()
    no = PackedProducts([w], capacity=8, plain=declined, choose=lambda band: "plain")
    no.prepare()
    assert no.decisions == {4: "plain", 8: "plain"}
    no(x, w, None)
    assert declined.calls == 1
    assert no.band == 0


def test_the_choice_is_measured_once_per_band_and_kept(tmp_path: Path) -> None:
    ws = weights((96, 64), (64, 96))
    choose = measured_chooser(ws, F.linear, cache_dir=tmp_path)
    first = choose(4)
    cached = json.loads((tmp_path / CACHE_FILE).read_text())
    (key,) = cached
    assert key.endswith("| 4 rows")
    assert cached[key]["choice"] == first
    assert set(cached[key]["seconds"]) == {"plain", *AVAILABLE}
    assert all(seconds > 0 for seconds in cached[key]["seconds"].values())
    other = "plain" if first != "plain" else AVAILABLE[0]
    cached[key]["choice"] = other  # what the file says is the answer from now on
    (tmp_path / CACHE_FILE).write_text(json.dumps(cached))
    assert measured_chooser(ws, F.linear, cache_dir=tmp_path)(4) == other


def test_the_fastest_pack_is_chosen_only_by_a_margin() -> None:
    assert decide({"plain": 1.0, "mkl": 0.8, "onednn": 0.5}) == "onednn"
    assert decide({"plain": 1.0, "mkl": 0.5, "onednn": 0.8}) == "mkl"
    assert decide({"plain": 1.0, "mkl": 0.95, "onednn": 0.97}) == "plain"  # a near tie stays plain
    assert decide({"plain": 1.0}) == "plain"  # a build without packs


def test_routed_layers_compute_through_the_products_and_are_restored() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    own = model[2].forward
    model[2].forward = own  # an instance forward set by someone else stays afterwards
    layers = linear_layers(model)
    plain = Recording()
    products = PackedProducts((layer.weight for layer in layers), capacity=4, plain=plain, choose=lambda band: "plain")
    x = torch.randn(4, 16)
    with torch.no_grad():
        expected = model(x)
        with routed(layers, products):
            inside = model(x)
        after = model(x)
    assert plain.calls == 2
    torch.testing.assert_close(inside, expected)
    assert torch.equal(after, expected)
    assert "forward" not in model[0].__dict__
    assert model[2].__dict__["forward"] is own


def test_nothing_is_packed_where_a_second_copy_of_the_weights_would_crowd_memory() -> None:
    (w,) = weights((256, 256))  # 256 KiB
    plain = Recording()
    crowded = PackedProducts([w], capacity=8, plain=plain, choose=lambda band: "mkl", available=lambda: 512 * 1024)
    assert crowded.bands() == []
    crowded(torch.randn(8, 256), w, None)
    assert plain.calls == 1
    roomy = PackedProducts([w], capacity=8, plain=plain, choose=lambda band: AVAILABLE[0], available=lambda: 2**20)
    roomy(torch.randn(8, 256), w, None)
    assert plain.calls == 1
    assert roomy.band == 8
