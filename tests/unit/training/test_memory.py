from __future__ import annotations

import pytest
import torch

from ml_playground.core.errors import ConfigError
from ml_playground.training.memory import GIB, MemoryEstimate, ModelShape, available_memory, check_fits, estimate_memory

pytestmark = pytest.mark.unit

# Qwen2.5-1.5B's published shape: 1.54 B parameters, hidden 1536, 28 layers, 12 heads, vocabulary 151,936.
QWEN_15B = ModelShape(
    parameters=1_543_714_304, trainable=18_464_768, hidden_size=1536, num_layers=28, num_heads=12, vocab_size=151_936
)


def test_estimate_parts_follow_the_formula() -> None:
    estimate = estimate_memory(
        QWEN_15B, weight_dtype=torch.bfloat16, batch_size=4, sequence_length=512, gradient_checkpointing=False
    )
    assert estimate.weights == QWEN_15B.parameters * 2
    assert estimate.gradients == QWEN_15B.trainable * 4
    assert estimate.optimizer == QWEN_15B.trainable * 8
    tokens = 4 * 512
    per_layer = tokens * 1536 * (34 + 5 * 12 * 512 / 1536)
    assert estimate.activations == int(28 * per_layer + 2 * tokens * 151_936 * 4)
    assert estimate.total == estimate.weights + estimate.gradients + estimate.optimizer + estimate.activations


def test_checkpointing_float32_and_description() -> None:
    args = {"batch_size": 4, "sequence_length": 512}
    full = estimate_memory(QWEN_15B, weight_dtype=torch.bfloat16, gradient_checkpointing=False, **args)
    recomputed = estimate_memory(QWEN_15B, weight_dtype=torch.bfloat16, gradient_checkpointing=True, **args)
    fp32 = estimate_memory(QWEN_15B, weight_dtype=torch.float32, gradient_checkpointing=True, **args)
    logits = 2 * 4 * 512 * QWEN_15B.vocab_size * 4  # float32 logits and their gradient, kept either way
    assert recomputed.activations - logits < (full.activations - logits) / 10
    assert fp32.weights == 2 * recomputed.weights
    assert "GiB" in full.describe()
    assert "MiB" in MemoryEstimate(1024, 0, 0, 0).describe()


def test_refuses_when_it_cannot_fit() -> None:
    estimate = MemoryEstimate(weights=3 * GIB, gradients=0, optimizer=0, activations=GIB)
    check_fits(estimate, 8 * GIB, "test device")
    with pytest.raises(ConfigError, match=r"= 4\.00 GiB, but only 2\.00 GiB \(test device\)") as info:
        check_fits(estimate, 2 * GIB, "test device")
    assert "train.model.gradient_checkpointing" in str(info.value)


def test_cpu_memory_is_the_available_system_memory() -> None:
    available, where = available_memory(torch.device("cpu"))
    assert available > 0
    assert where == "available system memory"
