"""A tiny GPT with random weights behind the family interface: what the engine and the scoring serve."""

from __future__ import annotations

import pytest
import torch

from ml_playground.core.tokenizer import CharTokenizer
from ml_playground.families.base import InferenceModel
from ml_playground.families.gpt.family import inference_model
from ml_playground.families.gpt.model import GPT, GPTConfig

TOKENIZER = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .,\n")


def tiny_model(gpt: GPT, batched: bool = False) -> InferenceModel:
    """``gpt`` (random weights) behind the family interface, with the batch decoder when ``batched``."""
    return inference_model(gpt.eval(), TOKENIZER, torch.device("cpu"), batched=batched)


@pytest.fixture(scope="module")
def model() -> InferenceModel:
    torch.manual_seed(0)
    return tiny_model(GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)))


@pytest.fixture(scope="module")
def batched_model() -> InferenceModel:
    """A tiny GPT (rotary positions, a context of 64) whose engine batches its streams continuously."""
    torch.manual_seed(1)
    config = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, rotary=True)
    return tiny_model(GPT(config), batched=True)
