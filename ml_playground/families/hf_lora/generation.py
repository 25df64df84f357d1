"""Token-by-token generation from a Hugging Face causal LM with our sampling rules.

The same ``next_token`` (temperature, top-k, top-p, seeded generator) as the GPT family, so a seed
means the same thing for every family; ``use_kv_cache`` keeps the model's own cache
(``past_key_values``) between steps, or recomputes the whole sequence each step without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ml_playground.core.sampling_rules import SamplingParams, guided_logits, next_token


class _Context:
    """One prompt's tokens and the model's KV cache for them."""

    def __init__(self, lm: nn.Module, tokens: torch.Tensor, use_kv_cache: bool) -> None:
        self.lm, self.tokens, self.use_kv_cache = lm, tokens, use_kv_cache
        self.past: Any = None

    def next_logits(self) -> torch.Tensor:
        if self.use_kv_cache:
            step_input = self.tokens if self.past is None else self.tokens[:, -1:]
            output = self.lm(input_ids=step_input, past_key_values=self.past, use_cache=True)
            self.past = output.past_key_values
        else:
            output = self.lm(input_ids=self.tokens, use_cache=False)
        logits: torch.Tensor = output.logits[:, -1, :].float()
        return logits

    def append(self, token: torch.Tensor) -> None:
        self.tokens = torch.cat([self.tokens, token], dim=1)


@torch.inference_mode()
def stream_tokens(lm: nn.Module, prompt: torch.Tensor, params: SamplingParams) -> Iterator[torch.Tensor]:
    """Yield each new token (B, 1) for a prompt of ids (B, T0); ``lm`` is a ``transformers`` causal LM (or PEFT's).

    Condition guidance (``params.guidance`` with the prompt under every known condition in
    ``params.contrast``) reads the model under each of them, as the GPT family does, with the same rule.
    """
    lm.eval()
    generator = torch.Generator(device=prompt.device).manual_seed(params.seed)
    context = _Context(lm, prompt, params.use_kv_cache)
    guided = params.guidance > 0 and len(params.contrast) > 1
    if guided and prompt.size(0) != 1:
        raise ValueError("guidance generates one sequence at a time")
    asked = [p for p in params.contrast if list(p.ids) == prompt[0].tolist()] if guided else []
    others = [
        _Context(lm, torch.tensor([list(p.ids)], device=prompt.device), params.use_kv_cache)
        for p in params.contrast
        if guided and p not in asked
    ]
    for _ in range(params.max_new_tokens):
        logits = context.next_logits()
        if guided:
            alternatives = [logits] * len(asked) + [other.next_logits() for other in others]
            logits = guided_logits(logits, alternatives, params.guidance)
        token = next_token(logits, params, generator)
        context.append(token)
        for other in others:
            other.append(token)
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
