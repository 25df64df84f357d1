"""A tiny real Llama and a tiny real Qwen2, built once for the batch decoders' tests (``decoding_checks.py``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ml_playground.families.hf_lora.hub import load_pretrained_model
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm

TEXT = "Sehr geehrte Frau Präsidentin! Meine Damen und Herren! Wir beraten heute den Haushalt. " * 3


@pytest.fixture(scope="package", params=["llama", "qwen2"])
def lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    folder = build_tiny_causal_lm(tmp_path_factory.mktemp(request.param), [TEXT], architecture=request.param)
    model: nn.Module = load_pretrained_model(str(folder), revision=None, dtype=torch.float32, key="x")
    return model.eval()
