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
from dataclasses import dataclass

import torch
from torch.distributed.fsdp import FSDPModule

from ml_playground.models.core.model import GPT, KVCache


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    use_kv_cache: bool = True
    keep_prefix: int = 0  # prompt tokens that stay in view when the window moves (at most half a block)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Mask (to -inf) all but the top-k tokens and outside the top-p nucleus; (B, V) -> (B, V)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already cover top_p; the first always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """One token per row from the last-position logits (B, V) -> (B, 1)."""
    if params.temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def generate_stream(model: GPT, prompt: torch.Tensor, params: SamplingParams) -> Iterator[torch.Tensor]:
    """Yield each new token (B, 1) as it is drawn, for a prompt of ids (B, T0)."""
    # An FSDP-sharded model (sampling during training) keeps buffers that training writes to again.
    grad_off = torch.no_grad() if isinstance(model, FSDPModule) else torch.inference_mode()
    return grad_off(_generate_stream)(model, prompt, params)


def _generate_stream(model: GPT, prompt: torch.Tensor, params: SamplingParams) -> Iterator[torch.Tensor]:
    model.eval()
    block = model.config.block_size
    keep = min(params.keep_prefix, prompt.size(1), block // 2)
    jump = max(1, (block - keep) // 2)
    generator = torch.Generator(device=prompt.device).manual_seed(params.seed)
    tokens = prompt
    start = max(keep, tokens.size(1) - (block - keep))
    cache: KVCache | None = None
    for _ in range(params.max_new_tokens):
        while keep + tokens.size(1) - start > block:
            start += jump
        length = keep + tokens.size(1) - start
        if not params.use_kv_cache:
            logits = model(_window(tokens, keep, start))
        elif cache is None or cache.length + 1 > block or cache.length != length - 1:
            cache = KVCache(model.config.n_layer, capacity=block)
            logits = model(_window(tokens, keep, start), cache)
        else:
            logits = model(tokens[:, -1:], cache)
        token = next_token(logits[:, -1, :], params, generator)
        tokens = torch.cat([tokens, token], dim=1)
        yield token


def _window(tokens: torch.Tensor, keep: int, start: int) -> torch.Tensor:
    return tokens[:, start:] if keep == 0 else torch.cat([tokens[:, :keep], tokens[:, start:]], dim=1)


def generate(model: GPT, prompt: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Prompt plus ``max_new_tokens`` new ids, (B, T0 + N)."""
    new = list(generate_stream(model, prompt, params))
    return torch.cat([prompt, *new], dim=1)
