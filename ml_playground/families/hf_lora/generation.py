"""Token-by-token generation from a Hugging Face causal LM with our sampling rules.

The same ``next_token`` (temperature, top-k, top-p, seeded generator) as the GPT family, so a seed
means the same thing for every family; ``use_kv_cache`` keeps the model's own cache
(``past_key_values``) between steps, or recomputes the whole sequence each step without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ml_playground.core.packed_products import Product, linear_layers, routed
from ml_playground.core.sampling_rules import SamplingParams, TokenSampler, guided_logits
from ml_playground.families.hf_lora.batched import last_logits_only, left_padded


class _Context:
    """One prompt's tokens and the model's KV cache for them."""

    def __init__(self, lm: nn.Module, tokens: torch.Tensor, use_kv_cache: bool, product: Product | None = None) -> None:
        self.lm, self.tokens, self.use_kv_cache = lm, tokens, use_kv_cache
        self.past: Any = None
        self.product, self.layers = product, linear_layers(lm) if product is not None else []
        self.last = last_logits_only(lm)  # the prompt's (or, without a cache, the sequence's) last position only

    def next_logits(self) -> torch.Tensor:
        # Routed for this call only: the model is as it was between tokens, whoever else decodes with it.
        with routed(self.layers, self.product) if self.product is not None else nullcontext():
            if self.use_kv_cache:
                step_input = self.tokens if self.past is None else self.tokens[:, -1:]
                output = self.lm(input_ids=step_input, past_key_values=self.past, use_cache=True, **self.last)
                self.past = output.past_key_values
            else:
                output = self.lm(input_ids=self.tokens, use_cache=False, **self.last)
        logits: torch.Tensor = output.logits[:, -1, :].float()
        return logits

    def append(self, token: torch.Tensor) -> None:
        self.tokens = torch.cat([self.tokens, token], dim=1)


class _Guided:
    """The prompt under every known condition as one left-padded batch: one forward pass per token for all."""

    def __init__(self, lm: nn.Module, prompts: list[list[int]], device: torch.device) -> None:
        self.lm = lm
        self.ids, self.mask, self.positions = left_padded(prompts, device)
        self.past: Any = None
        self.last = last_logits_only(lm)

    def next_logits(self) -> torch.Tensor:
        """(conditions, V) for the token after each row."""
        output = self.lm(
            input_ids=self.ids,
            attention_mask=self.mask,
            position_ids=self.positions,
            past_key_values=self.past,
            use_cache=True,
            **self.last,
        )
        self.past = output.past_key_values
        logits: torch.Tensor = output.logits[:, -1, :].float()
        return logits

    def append(self, token: torch.Tensor) -> None:
        rows = self.mask.size(0)
        self.ids = token.expand(rows, 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(rows, 1)], dim=1)
        self.positions = self.positions[:, -1:] + 1


@torch.inference_mode()
def stream_tokens(
    lm: nn.Module, prompt: torch.Tensor, params: SamplingParams, product: Product | None = None
) -> Iterator[torch.Tensor]:
    """Yield each new token (B, 1) for a prompt of ids (B, T0); ``lm`` is a ``transformers`` causal LM (or PEFT's).
    ``product``: what the linear layers multiply with (one row in blocks, ``core/row_products.py``); default theirs.

    Condition guidance (``params.guidance`` with the prompt under every known condition in
    ``params.contrast``) applies the GPT family's rule to the model read under each condition; the
    conditions run as one left-padded batch, so the asked prompt's logits agree with an unpadded pass
    to float rounding, not bit for bit.
    """
    lm.eval()
    sampler = TokenSampler(params, prompt.device)
    guided = params.guided
    if guided:
        if prompt.size(0) != 1:
            raise ValueError("guidance generates one sequence at a time")
        asked = prompt[0].tolist()
        rows = [asked, *(list(p.ids) for p in params.contrast if list(p.ids) != asked)]
        batch = _Guided(lm, rows, prompt.device)
        for _ in range(params.max_new_tokens):
            logits = batch.next_logits()
            alternatives = [logits[0]] * (len(params.contrast) - len(rows) + 1) + list(logits[1:])
            token = sampler(guided_logits(logits[:1], [a[None] for a in alternatives], params.guidance))
            batch.append(token)
            yield token
        return
    context = _Context(lm, prompt, params.use_kv_cache, product)
    for _ in range(params.max_new_tokens):
        token = sampler(context.next_logits())
        context.append(token)
        yield token


def generate_ids(lm: nn.Module, prompt_ids: list[int], params: SamplingParams, stop_id: int | None) -> list[int]:
    """The new ids after ``prompt_ids``, up to and including ``stop_id``."""
    device = next(lm.parameters()).device
    new: list[int] = []
    for token in stream_tokens(lm, torch.tensor([prompt_ids], dtype=torch.long, device=device), params):
        new.append(int(token[0, 0]))
        if new[-1] == stop_id:
            break
    return new
