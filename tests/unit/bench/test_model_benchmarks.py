from __future__ import annotations

import pytest
import torch

from ml_playground.bench.model_benchmarks import TINY, ours_model, train_throughput_vs_hf, training_steps

pytestmark = pytest.mark.unit


def test_the_autocast_training_row_runs_both_sides_under_the_same_autocast() -> None:
    (row,) = train_throughput_vs_hf(TINY, autocast=torch.bfloat16)
    assert row.name == "train tokens/s vs HF GPT2LMHeadModel, bfloat16 autocast"
    assert row.figure > 0
    assert row.peer_figure is not None
    assert row.peer_figure > 0
    assert row.target == 1.5
    names = [r.name for r in train_throughput_vs_hf(TINY)]
    assert names == ["train tokens/s vs HF GPT2LMHeadModel", "train FLOP/s vs fp32 matmul peak"]


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_training_steps_forward_in_the_autocast_dtype_and_keep_float32_weights(autocast: torch.dtype | None) -> None:
    model = ours_model(TINY, 1, 2, 16, 16)
    seen: list[torch.dtype] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = model(x)
        seen.append(logits.dtype)
        return logits

    before = [p.detach().clone() for p in model.parameters()]
    training_steps(model, forward, TINY, 16, autocast)()
    assert seen == [autocast or torch.float32] * TINY.steps_per_repeat
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))  # it trained
