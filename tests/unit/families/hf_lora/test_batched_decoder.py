"""Continuous batching for a Hugging Face causal LM: each row's logits are what the model gives its own tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ml_playground.core.packed_products import Method
from ml_playground.core.sampling_rules import ContrastPrompt, SamplingParams
from ml_playground.families.hf_lora.batched import HfBatchedDecoder, prefill
from tests.unit.families.hf_lora.decoding_checks import (
    PACKING,
    alone,
    assert_answers_together_are_answers_alone,
    join,
    step_against_alone,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("method", PACKING)
def test_every_row_gets_the_logits_of_its_own_sequence_as_rows_join_and_leave(lm: nn.Module, method: Method) -> None:
    assert HfBatchedDecoder.applies(lm)
    prompt = method == "onednn"  # with oneDNN's packs, prompts go through them too: the steps check their cache
    decoder = HfBatchedDecoder(lm, rows=4, context_length=64, pack=lambda band: method, prompt=lambda ws: prompt)
    sequences: dict[int, list[int]] = {}

    join(decoder, lm, sequences, [5, 6, 7])
    join(decoder, lm, sequences, [9] * 11)  # longer than the cache so far: the first row is padded on the left
    for step in range(9):
        if step == 2:
            join(decoder, lm, sequences, [11, 12])  # shorter: padded itself
        if step == 4:
            width = decoder.mask.size(1)
            decoder.remove(1)  # the longest row leaves: the columns only it used are cut off the front
            del sequences[1]
            assert decoder.mask.size(1) < width
            assert decoder.mask.size(1) == max(len(s) for s in sequences.values()) - 1
        if step == 6:
            # longer than everything in view
            join(decoder, lm, sequences, [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20])
        step_against_alone(decoder, lm, sequences)
    assert sorted(sequences) == [0, 2, 3]
    assert decoder.products.band == (0 if method == "plain" else 4)  # three rows or more ran packed (padded to four)
    assert all("forward" not in layer.__dict__ for layer in decoder.linears)  # the model is as it was
    assert decoder.route is not None
    assert bool(decoder.route[1].packs) is prompt
    for handle in (2, 0, 3):
        decoder.remove(handle)
    assert len(decoder) == 0
    assert decoder.step() == {}
    join(decoder, lm, sequences, [5, 6, 7])  # an emptied batch starts again
    assert len(decoder) == 1


@pytest.mark.parametrize("method", PACKING)
def test_answers_together_are_the_answers_alone(lm: nn.Module, method: Method) -> None:
    """Greedy and seeded samples (one with a repetition penalty): the same tokens beside others as decoded alone
    by ``stream_tokens``."""
    decoder = HfBatchedDecoder(lm, rows=4, context_length=64, pack=lambda band: method)
    assert_answers_together_are_answers_alone(decoder, lm)


def test_the_batch_takes_what_fits_it(lm: nn.Module) -> None:
    decoder = HfBatchedDecoder(lm, rows=1, context_length=16)
    assert decoder.route is None  # one stream's decoder would pay more for packs than its prompt saves
    assert decoder.admits(4, SamplingParams(max_new_tokens=12))
    assert not decoder.admits(4, SamplingParams(max_new_tokens=13))  # past the context
    assert not decoder.admits(0, SamplingParams(max_new_tokens=2))
    assert not decoder.admits(4, SamplingParams(max_new_tokens=2, use_kv_cache=False))
    guided = SamplingParams(max_new_tokens=2, guidance=2.0, contrast=(ContrastPrompt((1,)), ContrastPrompt((2,))))
    assert not decoder.admits(4, guided)
    decoder.add([1, 2, 3, 4], SamplingParams(max_new_tokens=12))
    assert not decoder.admits(4, SamplingParams(max_new_tokens=2))  # no free row
    decoder.positions[0] = 16
    with pytest.raises(ValueError, match="context length 16"):
        decoder.step()


def test_a_sliding_window_cache_keeps_the_one_stream_path(tmp_path: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, use_sliding_window=True, sliding_window=8, max_window_layers=0,
        layer_types=["sliding_attention", "sliding_attention"],
    )  # fmt: skip
    assert not HfBatchedDecoder.applies(Qwen2ForCausalLM(config).eval())


def test_streams_prefilled_together_get_the_logits_of_their_own_sequences(lm: nn.Module) -> None:
    decoder = HfBatchedDecoder(lm, rows=4, context_length=64, pack=lambda band: "plain")
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    _, first = decoder.add([20, 21], greedy)  # a stream already decoding
    decoder.step()
    sequences = {0: [20, 21, first, decoder.rows[0].last]}
    prompts = [[5, 6, 7], [9] * 11, [11, 12]]  # left-padded to 11 among themselves, then to the batch
    started = decoder.add_many(prompts, [greedy] * 3)
    for (handle, first), prompt in zip(started, prompts, strict=True):
        assert first == int(alone(lm, prompt).argmax())
        sequences[handle] = [*prompt, first]
    for _ in range(6):
        step_against_alone(decoder, lm, sequences)
    assert sorted(sequences) == [0, 1, 2, 3]


def test_a_step_writes_its_column_in_place_until_rows_join_or_leave(lm: nn.Module) -> None:
    decoder = HfBatchedDecoder(lm, rows=4, context_length=64, pack=lambda band: "plain")
    greedy = SamplingParams(max_new_tokens=40, temperature=0.0)
    sequences: dict[int, list[int]] = {}
    for prompt in ([5, 6, 7], [8, 9]):
        handle, first = decoder.add(prompt, greedy)
        sequences[handle] = [*prompt, first]
    step_against_alone(decoder, lm, sequences)  # the first step copies the prefilled cache into buffers with room
    layer = decoder.past.layers[0]
    storage = layer.keys.data_ptr()
    for _ in range(4):
        step_against_alone(decoder, lm, sequences)
        assert layer.keys.size(-2) == len(sequences[0]) - 1
        assert layer.keys.data_ptr() == storage  # the cache was not copied
    decoder.remove(0)  # rows set from outside: copied into new buffers at the next step
    del sequences[0]
    step_against_alone(decoder, lm, sequences)
    assert decoder.past.layers[0].keys.size(0) == 1
    assert decoder.past.layers[0].keys.data_ptr() != storage


def test_a_prefill_computes_only_the_last_positions_logits_where_the_model_can(lm: nn.Module) -> None:
    prompts = [[5, 6, 7], [9] * 6]
    output, row_mask = prefill(lm, prompts, torch.device("cpu"))
    assert output.logits.shape == (2, 1, lm.config.vocab_size)  # the output head ran on one position a row
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(output.logits[row, -1].float(), alone(lm, prompt), rtol=1e-4, atol=1e-4)
    assert row_mask.tolist() == [[0, 0, 0, 1, 1, 1], [1] * 6]

    class OwnForward(nn.Module):  # a model whose forward does not take logits_to_keep: every position's logits
        def __init__(self) -> None:
            super().__init__()
            self.inner = lm

        def forward(self, input_ids: torch.Tensor, **kwargs: object) -> object:
            assert "logits_to_keep" not in kwargs
            return self.inner(input_ids=input_ids, **kwargs)

    output, _ = prefill(OwnForward(), prompts[:1], torch.device("cpu"))
    assert output.logits.shape == (1, 3, lm.config.vocab_size)
