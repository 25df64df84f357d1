"""Drawing a token: each with its probability, never one of probability 0, the same for the same seed."""

from __future__ import annotations

import pytest
import torch

from ml_playground.core.sampling_rules import (
    SamplingParams,
    TokenSampler,
    draw,
    draw_among_top_k,
    filter_logits,
    next_token,
    penalize_repeats,
)

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


def sorted_nucleus(logits: torch.Tensor, top_k: int | None, top_p: float) -> torch.Tensor:
    """The top-k and top-p filter written plainly: the whole vocabulary sorted (the reference)."""
    if top_k is not None and top_k < logits.size(-1):
        logits = logits.masked_fill(logits < torch.topk(logits, top_k).values[:, -1:], float("-inf"))
    ordered, order = torch.sort(logits, descending=True)
    probs = torch.softmax(ordered, dim=-1)
    dropped = (probs.cumsum(dim=-1) - probs) >= top_p
    return logits.masked_fill(dropped.scatter(-1, order, dropped), float("-inf"))


@pytest.mark.parametrize(
    ("scale", "top_k", "top_p"),
    [
        (4.0, None, 0.9),  # peaked: the nucleus is among the first candidates
        (0.05, None, 0.9),  # nearly flat: the nucleus takes most of the vocabulary, found after several rounds
        (4.0, 50, 0.95),  # top-k first: the nucleus among the k
        (0.05, 50, 0.5),
        (1.0, 700, 0.99),
    ],
)
def test_the_nucleus_is_the_one_of_the_sorted_vocabulary(scale: float, top_k: int | None, top_p: float) -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5000, generator=generator) * scale
    kept = torch.isfinite(filter_logits(logits, top_k, top_p))
    expected = torch.isfinite(sorted_nucleus(logits, top_k, top_p))
    assert torch.equal(kept, expected)
    assert int(kept.sum(dim=-1).min()) >= 1


def test_ties_at_the_k_th_logit_keep_every_tied_token_in_the_nucleus() -> None:
    logits = torch.tensor([[5.0, 1.0, 1.0, 1.0, -2.0]])  # top-2 keeps the three tied at 1.0
    assert torch.isfinite(filter_logits(logits, top_k=2, top_p=1.0)).sum() == 4
    kept = torch.isfinite(filter_logits(logits, top_k=2, top_p=0.99))
    assert torch.equal(kept, torch.isfinite(sorted_nucleus(logits, 2, 0.99)))
    assert kept.tolist() == [[True, True, True, True, False]]


@pytest.mark.parametrize(("top_k", "top_p"), [(50, None), (50, 0.9), (3, 0.5), (400, 0.99)])
def test_a_draw_among_the_top_k_is_the_whole_vocabulary_draw(top_k: int, top_p: float | None) -> None:
    logits = torch.randn(4, 3000, generator=torch.Generator().manual_seed(5)) * 2
    among, whole = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    for _ in range(300):
        fast = draw_among_top_k(logits, top_k, top_p, among)
        assert fast is not None
        slow = draw(torch.softmax(filter_logits(logits, top_k, top_p), dim=-1), whole)
        assert torch.equal(fast, slow)


def test_no_top_k_or_a_tie_at_the_k_th_takes_the_whole_vocabulary() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 1.0, 1.0, -2.0]])
    assert draw_among_top_k(logits, None, 0.9, generator) is None
    assert draw_among_top_k(logits, 5, None, generator) is None  # k is the whole vocabulary
    assert draw_among_top_k(logits, 2, None, generator) is None  # the 2nd and 3rd tie: the filter keeps both
    params = SamplingParams(max_new_tokens=1, top_k=2, seed=0)
    drawn = {int(next_token(logits, params, generator)) for _ in range(300)}
    assert drawn == {0, 1, 2, 3}  # the tied ones are drawn too
