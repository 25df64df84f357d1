"""Continuous batching for the GPT family: each row's logits are what GPT.forward gives for its own tokens."""

from __future__ import annotations

import pytest
import torch

from ml_playground.core.packed_products import PACKS, Method, packing_available
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.families.gpt.batched import BatchedDecoder
from ml_playground.families.gpt.model import GPT, GPTConfig

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "method",
    [
        pytest.param(method, marks=pytest.mark.skipif(not packing_available(method), reason=f"no {method} pack"))
        for method in ("plain", *PACKS)
    ],
)
@pytest.mark.parametrize("rotary", [False, True])
def test_every_row_gets_the_logits_of_its_own_sequence(rotary: bool, method: Method) -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=40, block_size=48, n_layer=2, n_head=4, n_embd=32, rotary=rotary)).eval()
    decoder = BatchedDecoder(gpt, rows=4, pack=lambda band: method)
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
    prompts = {0: [1, 2, 3], 1: [5] * 11, 2: [7, 8], 3: [9, 10, 11, 12, 13, 14]}
    sequences: dict[int, list[int]] = {}
    for prompt in prompts.values():
        handle, first = decoder.add(prompt, greedy)
        sequences[handle] = [*prompt, first]
    for step in range(8):
        if step == 3:  # a row leaves in the middle; the last row moves into its slot
            decoder.remove(1)
            del sequences[1]
        with torch.inference_mode():
            logits = decoder.logits()
            for i, row in enumerate(decoder.rows):
                expected = gpt(torch.tensor([sequences[row.handle]]))[0, -1]
                torch.testing.assert_close(logits[i], expected, rtol=0, atol=1e-4)
                row.last = int(expected.argmax())
                sequences[row.handle].append(row.last)
    assert sorted(sequences) == [0, 2, 3]
    assert decoder.products.band == (0 if method == "plain" else 4)  # four rows, then three, ran packed


def test_the_batch_takes_what_fits_it() -> None:
    gpt = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    decoder = BatchedDecoder(gpt, rows=1)
    assert decoder.admits(4, SamplingParams(max_new_tokens=12))
    assert not decoder.admits(4, SamplingParams(max_new_tokens=13))  # the window would have to slide
    assert not decoder.admits(0, SamplingParams(max_new_tokens=2))
    assert not decoder.admits(4, SamplingParams(max_new_tokens=2, use_kv_cache=False))
    assert not decoder.admits(4, SamplingParams(max_new_tokens=2), joining=1)  # its one row is taken by another
    decoder.add([1, 2, 3, 4], SamplingParams(max_new_tokens=12))
    assert not decoder.admits(4, SamplingParams(max_new_tokens=2))  # no free row
    assert decoder.step().keys() == {0}
    assert BatchedDecoder(decoder.model, 1).step() == {}


def test_streams_added_together_are_taken_back_when_one_fails() -> None:
    gpt = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    decoder = BatchedDecoder(gpt, rows=4, pack=lambda band: "plain")
    greedy = SamplingParams(max_new_tokens=4, temperature=0.0)
    decoder.add([1, 2], greedy)
    with pytest.raises(IndexError):
        decoder.add_many([[3, 4], [5], [99]], [greedy] * 3)  # no token 99: the third prefill fails
    assert [row.handle for row in decoder.rows] == [0]  # the two before it are taken back
    started = decoder.add_many([[3, 4], [5]], [greedy] * 2)
    assert [handle for handle, _ in started] == [3, 4]
    assert len(decoder) == 3
