"""Generation from a Hugging Face causal LM with our sampling rules, with and without its KV cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
