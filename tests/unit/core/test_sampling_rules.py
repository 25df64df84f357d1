"""Drawing a token: each with its probability, never one of probability 0, the same for the same seed."""

from __future__ import annotations

import pytest
import torch

from ml_playground.core.sampling_rules import (
    SamplingParams,
    TokenSampler,
    draw,
    draw_among_top_k,
    draw_rows,
    filter_logits,
    largest,
    next_token,
    penalize_repeats,
    uniforms,
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


@pytest.mark.parametrize("vocabulary", [49152, 50257, 3000])
@pytest.mark.parametrize("count", [1, 6, 51])
def test_the_largest_logits_are_top_k_s(vocabulary: int, count: int) -> None:
    generator = torch.Generator().manual_seed(vocabulary + count)
    smooth = torch.randn(5, vocabulary, generator=generator) * 3
    tied = torch.randint(0, 40, (5, vocabulary), generator=generator).float()  # every value hundreds of times
    for logits in (smooth, tied):
        values, index = largest(logits, count)
        top = torch.topk(logits, count, dim=-1)
        assert torch.equal(values, top.values)
        assert torch.equal(logits.gather(1, index), values)  # where they are, whichever of equal values
        if logits is smooth:
            assert torch.equal(index, top.indices)


def test_a_row_of_fewer_finite_logits_than_asked_keeps_inside_the_vocabulary() -> None:
    logits = torch.full((2, 1000), float("-inf"))  # 1000 is not a multiple of the chunk: the last one is padded
    logits[0, 3] = 1.0
    logits[1, 990:] = torch.arange(10.0)
    values, index = largest(logits, 2)
    assert torch.equal(values, torch.topk(logits, 2, dim=-1).values)
    assert int(index.max()) < 1000
    assert index[0, 0] == 3


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_a_temperature_divides_the_top_k_as_it_would_divide_every_logit(temperature: float) -> None:
    logits = torch.randn(3, 20000, generator=torch.Generator().manual_seed(1)) * 4
    among, whole = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for _ in range(100):
        fast = draw_among_top_k(logits, 40, 0.9, among, temperature)
        slow = draw(torch.softmax(filter_logits(logits / temperature, 40, 0.9), dim=-1), whole)
        assert fast is not None
        assert torch.equal(fast, slow)


def sampler_settings() -> list[SamplingParams]:
    """A batch of streams: three sharing top-k settings, two greedy, one penalized, two sharing a draw from the
    whole vocabulary (no top-k), one alone at its temperature."""
    shared = SamplingParams(max_new_tokens=9, temperature=1.0, top_k=50, top_p=0.95)
    return [
        SamplingParams(max_new_tokens=9, temperature=1.0, top_k=50, top_p=0.95, seed=1),
        SamplingParams(max_new_tokens=9, temperature=0.0, seed=2),
        shared,
        SamplingParams(max_new_tokens=9, temperature=1.0, top_k=50, top_p=0.95, seed=3, repetition_penalty=1.3),
        SamplingParams(max_new_tokens=9, temperature=0.8, top_p=0.9, seed=4),
        SamplingParams(max_new_tokens=9, temperature=0.0, top_k=7, seed=5),  # greedy all the same
        SamplingParams(max_new_tokens=9, temperature=0.6, top_k=20, seed=6),
        SamplingParams(max_new_tokens=9, temperature=1.0, top_k=50, top_p=0.95, seed=7),
        SamplingParams(max_new_tokens=9, temperature=0.8, top_p=0.9, seed=8),
    ]


def test_rows_drawn_together_are_each_streams_own_draws() -> None:
    settings = sampler_settings()
    together = [TokenSampler(params, torch.device("cpu")) for params in settings]
    apart = [TokenSampler(params, torch.device("cpu")) for params in settings]
    generator = torch.Generator().manual_seed(3)
    for step in range(40):
        logits = torch.randn(len(settings), 49152, generator=generator) * 3
        if step % 10 == 3:  # a tie at the 50th logit of one row: its group is drawn one row at a time
            order = logits[2].argsort(descending=True)
            logits[2, order[50]] = logits[2, order[49]]
        drawn = draw_rows(logits, together)
        assert drawn == [int(sampler(logits[i : i + 1])[0, 0]) for i, sampler in enumerate(apart)]
    for mine, theirs in zip(together, apart, strict=True):  # every generator where drawing alone left it
        assert torch.equal(mine.generator.get_state(), theirs.generator.get_state())


def test_whole_vocabulary_rows_drawn_together_are_each_streams_own_draws() -> None:
    """The bench's GPT settings: a 65-token vocabulary, top-k 200 (all of it), temperature 1; and with top-p."""
    for top_p in (None, 0.9):
        settings = [SamplingParams(max_new_tokens=9, temperature=1.0, top_k=200, top_p=top_p, seed=s) for s in range(8)]
        together = [TokenSampler(params, torch.device("cpu")) for params in settings]
        apart = [TokenSampler(params, torch.device("cpu")) for params in settings]
        generator = torch.Generator().manual_seed(4)
        seen: set[int] = set()
        for _ in range(60):
            logits = torch.randn(len(settings), 65, generator=generator) * 2
            drawn = draw_rows(logits, together)
            assert drawn == [int(sampler(logits[i : i + 1])[0, 0]) for i, sampler in enumerate(apart)]
            seen.update(drawn)
        assert len(seen) > 30  # drawn, not the most likely token each time
        for mine, theirs in zip(together, apart, strict=True):
            assert torch.equal(mine.generator.get_state(), theirs.generator.get_state())


def test_each_row_needs_its_own_generator() -> None:
    generators = [torch.Generator().manual_seed(seed) for seed in (1, 2)]
    assert uniforms(2, generators, torch.device("cpu")).shape == (2, 1)
    with pytest.raises(ValueError, match="2 generators for 3 rows"):
        uniforms(3, generators, torch.device("cpu"))
