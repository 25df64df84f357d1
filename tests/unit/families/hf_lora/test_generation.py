"""Generation from a Hugging Face causal LM with our sampling rules, with and without its KV cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ml_playground.core.packed_products import linear_layers
from ml_playground.core.row_products import RowProducts
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.families.hf_lora.generation import generate_ids, stream_tokens
from ml_playground.families.hf_lora.hub import load_pretrained_model
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm

pytestmark = pytest.mark.unit

TEXT = "Sehr geehrte Frau Präsidentin! Meine Damen und Herren! Wir beraten heute den Haushalt. " * 3


def test_the_cache_changes_nothing_and_generation_stops_at_the_stop_id(tmp_path: Path) -> None:
    model = load_pretrained_model(str(build_tiny_causal_lm(tmp_path / "tiny", [TEXT])), revision=None,
                                  dtype=torch.float32)  # fmt: skip
    prompt = torch.tensor([[5, 6, 7]])
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    cached = [int(t) for t in stream_tokens(model, prompt, greedy)]
    uncached = [int(t) for t in stream_tokens(model, prompt, SamplingParams(8, temperature=0.0, use_kv_cache=False))]
    assert cached == uncached
    assert len(cached) == 8
    sampled = SamplingParams(max_new_tokens=8, temperature=1.0, top_k=5, seed=3)
    assert generate_ids(model, [5, 6, 7], sampled, None) == generate_ids(model, [5, 6, 7], sampled, None)
    stop = cached[2]
    assert generate_ids(model, [5, 6, 7], greedy, stop) == cached[: cached.index(stop) + 1]


def test_guidance_reads_every_condition_in_one_padded_batch_as_it_would_alone(tmp_path: Path) -> None:
    """Left padding, the attention mask and the position ids give each row the logits of its prompt alone."""
    from ml_playground.core.sampling_rules import ContrastPrompt
    from ml_playground.core.tokenizer import PretrainedTokenizer
    from ml_playground.families.hf_lora.generation import _Context, _Guided

    folder = build_tiny_causal_lm(tmp_path / "m", ["Der Bundestag hat heute beschlossen. " * 50], vocab_size=300)
    lm = load_pretrained_model(str(folder), revision=None, dtype=torch.float32, key="x").eval()
    tokenizer = PretrainedTokenizer.from_pretrained(str(folder))
    prompts = [tokenizer.encode(f"<|party|>{party}<|text|>") for party in ("SPD", "BÜNDNIS 90/DIE GRÜNEN", "FDP")]
    assert len({len(p) for p in prompts}) > 1  # the rows really are padded
    with torch.inference_mode():
        batch = _Guided(lm, prompts, torch.device("cpu"))
        alone = [_Context(lm, torch.tensor([p]), use_kv_cache=True) for p in prompts]
        for _ in range(4):
            together = batch.next_logits()
            separately = torch.cat([context.next_logits() for context in alone])
            assert torch.allclose(together, separately, atol=1e-5)
            token = separately[0].argmax().view(1, 1)
            batch.append(token)
            for context in alone:
                context.append(token)
    contrast = tuple(ContrastPrompt(tuple(p)) for p in prompts)
    params = SamplingParams(max_new_tokens=5, temperature=0.0, guidance=3.0, contrast=contrast)
    guided = list(stream_tokens(lm, torch.tensor([prompts[0]]), params))
    assert len(guided) == 5
    with pytest.raises(ValueError, match="one sequence at a time"):
        next(stream_tokens(lm, torch.tensor([prompts[0], prompts[0]]), params))


def test_one_row_products_in_blocks_give_the_same_tokens_and_leave_the_model_as_it_was(tmp_path: Path) -> None:
    """Decoding with each layer's one-row product in row blocks (``core/row_products.py``, what loading measures
    on a CPU where it is faster): the same greedy tokens, the products taken in blocks, the layers restored."""
    model = load_pretrained_model(str(build_tiny_causal_lm(tmp_path / "tiny", [TEXT])), revision=None,
                                  dtype=torch.float32)  # fmt: skip
    layers = linear_layers(model)
    products = Counting([layer.weight for layer in layers], blocks={1: 2})
    assert products.weights  # the tiny model's widths split in two
    prompt = torch.tensor([[5, 6, 7]])
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    plain = [int(t) for t in stream_tokens(model, prompt, greedy)]
    assert [int(t) for t in stream_tokens(model, prompt, greedy, products)] == plain
    assert products.blocked > 0
    assert all("forward" not in layer.__dict__ for layer in layers)


class Counting(RowProducts):
    """Row blocks, counting the products that took them."""

    blocked = 0

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (id(weight), 2) in self.weights and x.numel() == x.shape[-1]:
            self.blocked += 1
        return super().__call__(x, weight, bias)
