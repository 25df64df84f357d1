"""Drawing a token: each with its probability, never one of probability 0, the same for the same seed."""

from __future__ import annotations

import pytest
import torch

from ml_playground.core.sampling_rules import SamplingParams, TokenSampler, draw, next_token, penalize_repeats

pytestmark = pytest.mark.unit


def test_each_token_is_drawn_with_its_probability_and_a_zero_never() -> None:
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0]])
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([draw(probs, generator) for _ in range(20_000)]).view(-1)
    shares = torch.bincount(draws, minlength=5).double() / len(draws)
    assert shares[1] == 0
    assert shares[4] == 0
    assert torch.allclose(shares, probs[0].double(), atol=0.015)  # 4 standard errors at 20,000 draws


def test_rows_draw_apart_and_one_certain_token_is_always_it() -> None:
    probs = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    generator = torch.Generator().manual_seed(3)
    assert {tuple(draw(probs, generator).view(-1).tolist()) for _ in range(200)} == {(2, 0)}


def test_the_same_seed_draws_the_same_tokens_and_top_k_keeps_to_the_top() -> None:
    logits = torch.randn(1, 49_152, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(max_new_tokens=1, temperature=1.0, top_k=5)

    def tokens(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [int(next_token(logits, params, generator)) for _ in range(50)]

    assert tokens(7) == tokens(7)
    assert tokens(7) != tokens(8)
    assert set(tokens(7)) <= set(torch.topk(logits, 5).indices.view(-1).tolist())


def test_the_repetition_penalty_divides_positive_logits_and_multiplies_negative_ones_of_seen_tokens() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert penalize_repeats(logits, seen, 2.0).tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_a_penalized_stream_leaves_the_token_it_drew_and_counts_only_its_own_tokens() -> None:
    """Greedy over fixed logits: without a penalty the same token every time; with one, the leader loses its
    place once drawn, and the next stream (a new sampler) starts from nothing seen."""
    logits = torch.tensor([[3.0, 2.8, 1.0, -1.0]])

    def greedy(penalty: float) -> list[int]:
        sampler = TokenSampler(
            SamplingParams(max_new_tokens=3, temperature=0.0, repetition_penalty=penalty), torch.device("cpu")
        )
        return [int(sampler(logits)) for _ in range(3)]

    assert greedy(1.0) == [0, 0, 0]
    # 3.0 / 1.2 = 2.5 < 2.8, so 1 comes next; then 2.8 / 1.2 = 2.33 < 2.5: a token is penalized once, however
    # often it was drawn (as CTRL, Hugging Face and llama.cpp do)
    assert greedy(1.2) == [0, 1, 0]
