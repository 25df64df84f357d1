"""The sampling rules every family decodes with: settings, filtering, drawing a token, condition guidance.

Families produce next-token logits their own way (our GPT with its KV cache, a Hugging Face model with
its own); what happens to those logits is the same everywhere, so an answer does not depend on which
family wrote it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ml_playground.core.lazy_types import is_fsdp_module


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    use_kv_cache: bool = True
    keep_prefix: int = 0  # prompt tokens that stay in view when the window moves (at most half a block)
    guidance: float = 0.0  # condition guidance weight (0: off); needs ``contrast``
    contrast: tuple[ContrastPrompt, ...] = ()  # the prompt under each known condition, the asked one included
    repetition_penalty: float = 1.0  # > 1: tokens already in the answer are less likely (1: off)

    @property
    def guided(self) -> bool:
        """Whether condition guidance applies: a weight and more than the asked condition to contrast it with."""
        return self.guidance > 0 and len(self.contrast) > 1


@dataclass(frozen=True)
class ContrastPrompt:
    """The prompt as it would read under another condition (another party in the header)."""

    ids: tuple[int, ...]
    keep_prefix: int = 0


NUCLEUS_START = 64  # candidates the top-p nucleus is first looked for among (four times as many each time it is not)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Mask (to -inf) all but the top-k tokens and outside the top-p nucleus; (B, V) -> (B, V).
    ``next_token`` draws among the top k without it where it can (``draw_among_top_k``)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        logits = logits.masked_fill(outside_nucleus(logits, top_p, top_k or NUCLEUS_START), float("-inf"))
    return logits


def outside_nucleus(logits: torch.Tensor, top_p: float, start: int) -> torch.Tensor:
    """(B, V) True for the tokens outside the top-p nucleus: a token is dropped when the tokens more likely than
    it already cover ``top_p``; the most likely one always stays.

    The nucleus of a language model's distribution is a few dozen to a few hundred tokens of a vocabulary of
    tens of thousands, so it is looked for among the ``start`` most likely tokens, then four times as many,
    and so on: every token outside the candidates has at least their whole mass before it. Sorting the whole
    vocabulary instead took 2.9 ms a row for SmolLM2's 49,152 tokens on the bench's Xeon, against 0.1 ms
    for the whole draw without top-p."""
    probs = torch.softmax(logits.float(), dim=-1)
    vocabulary = probs.size(-1)
    count = min(max(start, 1), vocabulary)
    while True:
        values, order = torch.topk(probs, count, dim=-1)
        covered = values.cumsum(dim=-1)
        if count == vocabulary or bool((covered[:, -1] >= top_p).all()):
            break
        count = min(4 * count, vocabulary)
    dropped = (covered - values) >= top_p  # the mass of the more likely tokens already covers top_p
    return torch.ones_like(probs, dtype=torch.bool).scatter(-1, order, dropped)


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The repetition penalty of CTRL (Keskar et al. 2019), as Hugging Face's ``repetition_penalty`` and
    llama.cpp's ``repeat_penalty`` apply it: the logit of every token in ``seen`` (B, V bool) is divided by
    ``penalty`` where it is positive and multiplied by it where it is negative."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


class TokenSampler:
    """One stream's draws: its settings, its seeded generator, and the tokens it drew, which the repetition
    penalty counts. The prompt's tokens are not counted, as in llama.cpp (its penalty sampler sees the
    tokens it drew; Hugging Face's ``repetition_penalty`` counts the prompt too): an answer may use the
    question's words."""

    def __init__(self, params: SamplingParams, device: torch.device) -> None:
        self.params = params
        self.generator = torch.Generator(device=device).manual_seed(params.seed)
        self.penalized = params.repetition_penalty != 1.0
        self.seen: torch.Tensor | None = None  # (B, V): drawn so far, made at the first draw

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of each row, (B, V) -> (B, 1)."""
        if self.seen is not None:
            logits = penalize_repeats(logits, self.seen, self.params.repetition_penalty)
        token = next_token(logits, self.params, self.generator)
        if self.penalized:
            if self.seen is None:
                self.seen = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
            self.seen.scatter_(1, token, True)
        return token


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """One token per row from the last-position logits (B, V) -> (B, 1)."""
    if params.temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    among_top_k = draw_among_top_k(logits, params.top_k, params.top_p, generator, params.temperature)
    if among_top_k is not None:
        return among_top_k
    return draw_from_vocabulary(logits, params.temperature, params.top_k, params.top_p, generator)


def draw_from_vocabulary(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: Generators
) -> torch.Tensor:
    """One token per row drawn through the whole vocabulary: ``logits`` (B, V) divided by ``temperature`` (above
    0), filtered, each row's distribution drawn from; every operator works row by row, so a row drawn beside
    others is the row drawn alone (``draw_rows``)."""
    filtered = filter_logits(logits / temperature, top_k, top_p)
    return draw(torch.softmax(filtered.float(), dim=-1), generator)


CHUNK = 128  # vocabulary entries whose maximum ``largest`` looks at as one


def largest(logits: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(logits, count, dim=-1)`` of (B, V): the ``count`` largest values of each row, sorted, and where
    they are; among equal values the positions may come in another order.

    Found among the ``count`` chunks of ``CHUNK`` entries with the largest maxima: any entry outside them is at
    most its chunk's maximum, below or equal to the ``count`` maxima inside. A top-k over SmolLM2's 49,152
    logits took about 100 us a row on a 2-core AMD EPYC and 330 us for eight rows; the maxima of the chunks
    are one pass over the row, and the top-k runs over the ``count`` chunks alone."""
    rows, vocabulary = logits.shape
    chunks = -(-vocabulary // CHUNK)
    if 4 * count <= chunks:  # else the chosen chunks would be much of the row: the plain top-k below
        padding = chunks * CHUNK - vocabulary
        padded = F.pad(logits, (0, padding), value=float("-inf")) if padding else logits
        blocks = padded.reshape(rows, chunks, CHUNK)
        best = torch.topk(blocks.amax(dim=-1), count, dim=-1).indices  # (B, count): the chunks of largest maxima
        candidates = blocks.gather(1, best.unsqueeze(-1).expand(rows, count, CHUNK)).view(rows, count * CHUNK)
        values, where = torch.topk(candidates, count, dim=-1)
        index = best.gather(1, where // CHUNK) * CHUNK + where % CHUNK
        if not padding or not bool((index >= vocabulary).any()):  # padding found: fewer finite logits than asked
            return values, index
    top = torch.topk(logits, count, dim=-1)
    return top.values, top.indices


def draw_among_top_k(
    logits: torch.Tensor, top_k: int | None, top_p: float | None, generator: Generators, temperature: float = 1.0
) -> torch.Tensor | None:
    """With top-k, the token drawn among the k most likely alone: the distribution ``filter_logits`` leaves, and
    the token ``draw`` finds in it, since the others have probability 0 and add nothing to its cumulative sums in
    vocabulary order. Nothing but finding the k passes over the vocabulary: for SmolLM2's 49,152 tokens, top-k 50
    and top-p 0.95 took 1.0 ms a row through the whole vocabulary (a sort for top-p) on the bench's Xeon,
    0.15 ms this way. None without top-k, or where the k-th logit ties the next in any row (the filter keeps both):
    nothing is drawn then, so the generators are as they were.

    ``temperature`` (above 0) divides the k + 1 largest logits alone: the same floats as dividing every logit
    first (a division is rounded the same wherever it runs), in the same order, since dividing by a positive
    number keeps it."""
    if top_k is None or top_k >= logits.size(-1):
        return None
    top_values, top_index = largest(logits, top_k + 1)  # most likely first; one more to see a tie at the k-th
    if temperature != 1.0:
        top_values = top_values / temperature
    values, index = top_values[:, :top_k].float(), top_index[:, :top_k]
    if bool((top_values[:, top_k - 1] == top_values[:, top_k]).any()):
        return None
    if top_p is not None and top_p < 1.0:
        probs = torch.softmax(values, dim=-1)
        values = values.masked_fill((probs.cumsum(dim=-1) - probs) >= top_p, float("-inf"))
    order = index.argsort(dim=-1)  # vocabulary order, in which the whole vocabulary's draw adds up
    pick = draw(torch.softmax(values.gather(-1, order), dim=-1), generator)
    return index.gather(-1, order).gather(-1, pick)


Generators = torch.Generator | Sequence[torch.Generator]  # one for every row, or one generator for each row


def uniforms(rows: int, generator: Generators, device: torch.device) -> torch.Tensor:
    """(rows, 1) uniform numbers in float64: ``rows`` from one generator, or one from each row's own."""
    if isinstance(generator, torch.Generator):
        return torch.rand(rows, 1, generator=generator, device=device, dtype=torch.float64)
    if len(generator) != rows:
        raise ValueError(f"{len(generator)} generators for {rows} rows")
    return torch.cat([torch.rand(1, 1, generator=g, device=device, dtype=torch.float64) for g in generator])


def draw(probs: torch.Tensor, generator: Generators) -> torch.Tensor:
    """One index per row of ``probs`` (B, V), drawn with its probability: where one uniform number falls in the
    row's cumulative distribution (summed in float64). A token of probability 0 is never drawn. ``generator``:
    one for every row, or one for each row (a batch of streams, each with its own seed).

    Why not ``torch.multinomial``: on a CPU it costs about 0.9 ms for one draw from a 49,152-token
    vocabulary (SmolLM2's), 8% of a batched decode step of eight rows; this costs about 35 us. Drawing one
    exponential per token (the Gumbel trick) costs the same 0.9 ms: the time goes into random numbers, so
    drawing one instead of one per token is the saving on any CPU."""
    cdf = probs.to(torch.float64).cumsum(dim=-1)
    total = cdf[:, -1:]
    u = uniforms(probs.size(0), generator, probs.device)
    # below the total even where u * total rounds up to it, so the token found always has a probability above 0
    point = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, point, right=True)


def draw_rows(logits: torch.Tensor, samplers: Sequence[TokenSampler]) -> list[int]:
    """The next token of each row of ``logits`` (n, V), row i drawn by ``samplers[i]``: the tokens each sampler
    would draw from its row alone, its generator left as that would leave it.

    A batch decoder's step draws one token for each stream with the stream's own settings and generator. One
    call a row costs a top-k over the vocabulary and a dozen small operators each time: 1.6 ms for eight rows of
    SmolLM2's 49,152 tokens with top-k 50 and top-p 0.95 on a 2-core AMD EPYC, 4% of the step; eight rows of
    the bench's 65-character model without top-k took 190 us one by one and 48 us together (its step: 4-5
    ms). Rows whose streams share their settings (greedy; top-k with one temperature and top-p; the whole
    vocabulary with one temperature and top-p) and count no repeats are drawn together, one uniform number
    from each row's generator; the others, and a top-k group with a tie at the k-th logit, one by one."""
    vocabulary = logits.size(-1)
    groups: dict[tuple[float, int | None, float | None], list[int]] = {}
    for i, sampler in enumerate(samplers):
        params = sampler.params
        if sampler.penalized:
            continue
        if params.temperature == 0.0:  # greedy: the other settings do not matter
            groups.setdefault((0.0, None, None), []).append(i)
        else:  # top-k below the vocabulary, or the whole vocabulary (no top-k, or one at least as large)
            groups.setdefault((params.temperature, params.top_k, params.top_p), []).append(i)
    tokens: dict[int, int] = {}
    for (temperature, top_k, top_p), rows in groups.items():
        if len(rows) < 2:
            continue
        every = len(rows) == len(samplers)  # then in order
        together = logits if every else logits.index_select(0, torch.tensor(rows, device=logits.device))
        generators = [samplers[i].generator for i in rows]
        if temperature == 0.0:
            drawn: torch.Tensor | None = together.argmax(dim=-1, keepdim=True)
        elif top_k is not None and top_k < vocabulary:
            drawn = draw_among_top_k(together, top_k, top_p, generators, temperature)
        else:
            drawn = draw_from_vocabulary(together, temperature, top_k, top_p, generators)
        if drawn is not None:
            tokens.update(zip(rows, drawn[:, 0].tolist(), strict=True))
    return [tokens[i] if i in tokens else int(sampler(logits[i : i + 1])[0, 0]) for i, sampler in enumerate(samplers)]


def grad_off(model: nn.Module) -> torch.no_grad | torch.inference_mode:
    """Inference mode, or plain ``no_grad`` for an FSDP model: it keeps buffers that training writes to again."""
    return torch.no_grad() if is_fsdp_module(model) else torch.inference_mode()


def guided_logits(asked: torch.Tensor, alternatives: list[torch.Tensor], weight: float) -> torch.Tensor:
    """Condition guidance: ``log p(x|c) + w * (log p(x|c) - log p(x))``, ``p(x)`` the mean over the conditions.

    ``alternatives`` are the next-token logits under every condition the model knows (the asked one
    included); their average in probability is the model's unconditioned prediction, so the added
    term is ``log p(c|x)`` up to a constant: tokens that are evidence for the asked condition gain.
    """
    lp = torch.log_softmax(asked.float(), dim=-1)
    stacked = torch.stack([torch.log_softmax(a.float(), dim=-1) for a in alternatives])
    marginal = torch.logsumexp(stacked, dim=0) - math.log(len(alternatives))
    return lp + weight * (lp - marginal)
