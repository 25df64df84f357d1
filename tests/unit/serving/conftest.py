"""A tiny GPT with random weights behind the family interface: what the engine and the scoring serve."""

from __future__ import annotations

import pytest
import torch

from ml_playground.core.tokenizer import CharTokenizer
from ml_playground.families.base import InferenceModel
from ml_playground.families.gpt.generation import generate_stream
from ml_playground.families.gpt.model import GPT, GPTConfig

TOKENIZER = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .,\n")


def tiny_model(gpt: GPT, batched: bool = False) -> InferenceModel:
    """``gpt`` (random weights) behind the family interface, with the batch decoder when ``batched``."""
    from ml_playground.families.gpt.batched import BatchedDecoder

    return InferenceModel(
        module=gpt.eval(),
        tokenizer=TOKENIZER,
        context_length=gpt.config.block_size,
        stream=lambda prompt, params: generate_stream(gpt, prompt, params),
        step=0,
        checkpoint="random weights",
        device=torch.device("cpu"),
        batch_decoder=(lambda rows: BatchedDecoder(gpt, rows)) if batched else None,
    )


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
