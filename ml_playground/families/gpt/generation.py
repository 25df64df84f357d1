"""Autoregressive generation with temperature, top-k, top-p and a seed; a KV cache behind one flag.

Context policy, shared by both paths so that they give the same tokens: the model sees the
first ``keep_prefix`` tokens (a conditioned prompt's header; none by default) followed by the tokens
from ``start`` on; when they would overflow ``block_size``, ``start`` jumps forward by half of the
room left (the learned position embeddings forbid sliding one token at a time without recomputing
everything). Keeping the header in view is what training does too: a long speech is learnt in
chunks that each repeat its header. The uncached path recomputes the window each step; the cached
path only re-fills the cache on a jump.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ml_playground.core.sampling_rules import SamplingParams, TokenSampler, grad_off, guided_logits
from ml_playground.families.gpt.decode import DecodeStep
from ml_playground.families.gpt.model import GPT, KVCache


def generate_stream(model: GPT, prompt: torch.Tensor, params: SamplingParams) -> Iterator[torch.Tensor]:
    """Yield each new token (B, 1) as it is drawn, for a prompt of ids (B, T0)."""
    return grad_off(model)(_generate_stream)(model, prompt, params)


class _Context:
    """One prompt's growing token sequence, the window the model sees of it, and its KV cache."""

    def __init__(self, model: GPT, prompt: torch.Tensor, keep_prefix: int, use_kv_cache: bool) -> None:
        self.model = model
        self.block = model.config.block_size
        self.keep = min(keep_prefix, prompt.size(1), self.block // 2)
        self.jump = max(1, (self.block - self.keep) // 2)
        self.tokens = prompt
        self.start = max(self.keep, prompt.size(1) - (self.block - self.keep))
        self.use_kv_cache = use_kv_cache
        self.cache: KVCache | None = None
        self.decode_step = DecodeStep(model) if use_kv_cache and DecodeStep.applies(model) else None

    def next_logits(self) -> torch.Tensor:
        """Logits (B, V) for the token after ``tokens``."""
        model, keep, block = self.model, self.keep, self.block
        while keep + self.tokens.size(1) - self.start > block:
            self.start += self.jump
        length = keep + self.tokens.size(1) - self.start
        if not self.use_kv_cache:
            logits = model(_window(self.tokens, keep, self.start), last_only=True)
        elif self.cache is None or self.cache.length + 1 > block or self.cache.length != length - 1:
            self.cache = KVCache(model.config.n_layer, capacity=block)
            logits = model(_window(self.tokens, keep, self.start), self.cache, last_only=True)
        elif self.decode_step is not None:
            logits = self.decode_step(self.tokens[:, -1:], self.cache)
        else:
            logits = model(self.tokens[:, -1:], self.cache)
        last: torch.Tensor = logits[:, -1, :]
        return last

    def append(self, token: torch.Tensor) -> None:
        self.tokens = torch.cat([self.tokens, token], dim=1)


def _generate_stream(model: GPT, prompt: torch.Tensor, params: SamplingParams) -> Iterator[torch.Tensor]:
    model.eval()
    sampler = TokenSampler(params, prompt.device)
    context = _Context(model, prompt, params.keep_prefix, params.use_kv_cache)
    guided = params.guided
    if guided and prompt.size(0) != 1:
        raise ValueError("guidance generates one sequence at a time")
    asked = [p for p in params.contrast if list(p.ids) == prompt[0].tolist()]
    others = (
        [
            _Context(model, torch.tensor([list(p.ids)], device=prompt.device), p.keep_prefix, params.use_kv_cache)
            for p in params.contrast
            if p not in asked
        ]
        if guided
        else []
    )
    for _ in range(params.max_new_tokens):
        logits = context.next_logits()
        if guided:
            alternatives = [logits] * len(asked) + [other.next_logits() for other in others]
            logits = guided_logits(logits, alternatives, params.guidance)
        token = sampler(logits)
        context.append(token)
        for other in others:
            other.append(token)
        yield token


def _window(tokens: torch.Tensor, keep: int, start: int) -> torch.Tensor:
    return tokens[:, start:] if keep == 0 else torch.cat([tokens[:, :keep], tokens[:, start:]], dim=1)


def generate(model: GPT, prompt: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Prompt plus ``max_new_tokens`` new ids, (B, T0 + N)."""
    new = list(generate_stream(model, prompt, params))
    return torch.cat([prompt, *new], dim=1)
