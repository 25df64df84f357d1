"""Many prompts decoded together give each prompt the answer it gets alone, in the jobs' order."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.core.tokenizer import CharTokenizer
from ml_playground.families.base import BatchDecoder, InferenceModel
from ml_playground.families.gpt.family import inference_model
from ml_playground.families.gpt.model import GPT, GPTConfig
from ml_playground.sampling.batched import Answer, decode_many
from ml_playground.sampling.runner import decode_sample

pytestmark = pytest.mark.unit

TOKENIZER = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .,\n")


def tiny(batched: bool) -> InferenceModel:
    torch.manual_seed(2)
    config = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=40, n_layer=2, n_head=2, n_embd=32, rotary=True)
    stops = frozenset(TOKENIZER.encode("."))  # some answers end at a stop, others at their length
    return inference_model(GPT(config).eval(), TOKENIZER, torch.device("cpu"), stop_ids=stops, batched=batched)


def jobs() -> list[tuple[list[int], SamplingParams]]:
    prompts = ["the house", "a", "we met at noon", "ok, then", "zz", "the end of it", "b", "more words here"]
    found = [
        (
            TOKENIZER.encode(text),
            SamplingParams(
                max_new_tokens=6 + i,
                temperature=0.9 if i % 2 else 0.0,
                seed=i,
                repetition_penalty=1.8 if i % 3 == 0 else 1.0,  # each row keeps the tokens it drew apart
            ),
        )
        for i, text in enumerate(prompts)
    ]
    found.append((TOKENIZER.encode("long"), SamplingParams(max_new_tokens=60, temperature=0.0)))  # past the context
    found.append((TOKENIZER.encode("none"), SamplingParams(max_new_tokens=0)))
    return found


@pytest.mark.parametrize("batched", [True, False])
def test_each_answer_is_the_one_decoded_alone(batched: bool) -> None:
    model = tiny(batched)
    decoders: list[Any] = []
    if model.batch_decoder is not None:
        factory = model.batch_decoder

        def recorded(rows: int) -> BatchDecoder:
            decoders.append(factory(rows))
            return decoders[-1]  # type: ignore[no-any-return]

        model = dataclasses.replace(model, batch_decoder=recorded)
    finished: list[int] = []

    def on_done(index: int, answer: Answer) -> None:
        finished.append(index)

    together = decode_many(model, jobs(), rows=3, on_done=on_done)
    alone = [decode_sample(model, prompt, params) for prompt, params in jobs()]
    assert together == alone
    assert sorted(finished) == list(range(len(alone)))
    assert any(stopped for _, stopped in alone)
    assert not all(stopped for _, stopped in alone)
    assert together[-1] == ("", False)
    if batched:  # the eight prompts that fit went through the batch; the long one was decoded alone
        assert [decoder.next_handle for decoder in decoders] == [8]
