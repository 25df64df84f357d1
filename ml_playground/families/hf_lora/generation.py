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

from ml_playground.core.sampling_rules import SamplingParams, next_token


@torch.inference_mode()
def stream_tokens(lm: nn.Module, prompt: torch.Tensor, params: SamplingParams) -> Iterator[torch.Tensor]:
    """Yield each new token (B, 1) for a prompt of ids (B, T0); ``lm`` is a ``transformers`` causal LM (or PEFT's)."""
    lm.eval()
    generator = torch.Generator(device=prompt.device).manual_seed(params.seed)
    tokens = prompt
    past: Any = None
    for _ in range(params.max_new_tokens):
        if params.use_kv_cache:
            step_input = tokens if past is None else tokens[:, -1:]
            output = lm(input_ids=step_input, past_key_values=past, use_cache=True)
            past = output.past_key_values
        else:
            output = lm(input_ids=tokens, use_cache=False)
        token = next_token(output.logits[:, -1, :].float(), params, generator)
        tokens = torch.cat([tokens, token], dim=1)
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
