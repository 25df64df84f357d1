"""A tiny GPT with random weights behind the family interface: what the engine and the scoring serve."""

from __future__ import annotations

import pytest
import torch

from ml_playground.core.tokenizer import CharTokenizer
from ml_playground.families.base import InferenceModel
from ml_playground.families.gpt.generation import generate_stream
from ml_playground.families.gpt.model import GPT, GPTConfig

TOKENIZER = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .,\n")


@pytest.fixture(scope="module")
def model() -> InferenceModel:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)).eval()
    return InferenceModel(
        module=gpt,
        tokenizer=TOKENIZER,
        context_length=32,
        stream=lambda prompt, params: generate_stream(gpt, prompt, params),
        step=0,
        checkpoint="random weights",
        device=torch.device("cpu"),
    )


@pytest.fixture(scope="module")
def batched_model() -> InferenceModel:
    """A tiny GPT (rotary positions, a context of 64) whose engine batches its streams continuously."""
    from ml_playground.families.gpt.batched import BatchedDecoder

    torch.manual_seed(1)
    config = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, rotary=True)
    gpt = GPT(config).eval()
    return InferenceModel(
        module=gpt,
        tokenizer=TOKENIZER,
        context_length=64,
        stream=lambda prompt, params: generate_stream(gpt, prompt, params),
        step=0,
        checkpoint="random weights",
        device=torch.device("cpu"),
        batch_decoder=lambda rows: BatchedDecoder(gpt, rows),
    )
