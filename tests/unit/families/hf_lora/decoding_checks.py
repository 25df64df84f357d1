"""What the tests of the ``hf_lora`` batch decoders check alike: each row's logits and answers are its own alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ml_playground.core.batch_rows import RowBatch
from ml_playground.core.packed_products import PACKS, packing_available
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.families.hf_lora.generation import generate_ids

PACKING = [  # every way a band's products can run on this build
    pytest.param(method, marks=pytest.mark.skipif(not packing_available(method), reason=f"no {method} pack"))
    for method in ("plain", *PACKS)
]
PROMPTS = [[5, 6, 7], [9] * 11, [11, 12], [20, 21, 22, 23]]
SETTINGS = [  # greedy, seeded top-k, seeded top-p, greedy with a repetition penalty
    SamplingParams(max_new_tokens=12, temperature=0.0),
    SamplingParams(max_new_tokens=12, temperature=1.0, top_k=20, seed=3),
    SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=4),
    SamplingParams(max_new_tokens=12, temperature=0.0, repetition_penalty=1.5),
]


def alone(lm: nn.Module, ids: list[int]) -> torch.Tensor:
    """The model's own next-token logits after ``ids``, computed alone."""
    with torch.inference_mode():
        logits: torch.Tensor = lm(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return logits


def join(decoder: RowBatch, lm: nn.Module, sequences: dict[int, list[int]], prompt: list[int]) -> None:
    """A greedy stream joins: its first token must be the one its prompt gives alone; its sequence starts."""
    handle, first = decoder.add(prompt, SamplingParams(max_new_tokens=30, temperature=0.0))
    assert first == int(alone(lm, prompt).argmax())
    sequences[handle] = [*prompt, first]


def step_against_alone(decoder: RowBatch, lm: nn.Module, sequences: dict[int, list[int]]) -> None:
    """One batched step: each row's logits must be its own sequence's alone (1e-4); greedy, so every row
    then feeds, and its sequence grows by, the token its sequence gives alone."""
    with torch.inference_mode():
        logits = decoder.logits()
    for i, row in enumerate(decoder.rows):
        expected = alone(lm, sequences[row.handle])
        torch.testing.assert_close(logits[i], expected, rtol=0, atol=1e-4)
        row.last = int(expected.argmax())
        sequences[row.handle].append(row.last)


def assert_answers_together_are_answers_alone(decoder: RowBatch, lm: nn.Module) -> None:
    """``PROMPTS`` with ``SETTINGS`` decoded together give the tokens ``generate_ids`` gives each alone."""
    together: dict[int, list[int]] = {}
    for prompt, params in zip(PROMPTS, SETTINGS, strict=True):
        handle, first = decoder.add(prompt, params)
        together[handle] = [first]
    for _ in range(11):
        for handle, token in decoder.step().items():
            together[handle].append(token)
    for handle, (prompt, params) in enumerate(zip(PROMPTS, SETTINGS, strict=True)):
        assert together[handle] == generate_ids(lm, prompt, params, None)
