from __future__ import annotations

import pytest

from ml_playground.training.loop.scheduler import LrSchedule

pytestmark = pytest.mark.unit


def test_warmup_then_cosine_to_min() -> None:
    schedule = LrSchedule(max_lr=1.0, min_lr=0.1, warmup_iters=10, decay_iters=110)
    assert schedule(1) == pytest.approx(0.1)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.55)
    assert schedule(110) == pytest.approx(0.1)
    assert schedule(500) == pytest.approx(0.1)
    values = [schedule(s) for s in range(10, 111)]
    assert values == sorted(values, reverse=True)


def test_linear_and_constant() -> None:
    linear = LrSchedule(max_lr=1.0, min_lr=0.0, warmup_iters=0, decay_iters=100, decay="linear")
    assert linear(50) == pytest.approx(0.5)
    constant = LrSchedule(max_lr=0.3, min_lr=0.0, warmup_iters=0, decay_iters=10, decay="constant")
    assert constant(5) == constant(500) == pytest.approx(0.3)
