from __future__ import annotations

import pytest
import torch
from torch import nn

from ml_playground.training.ema import EMA

pytestmark = pytest.mark.unit


def set_weight(model: nn.Linear, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)
        assert model.bias is not None
        model.bias.fill_(value)


def test_decay_zero_equals_the_raw_weights() -> None:
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.0)
    for value in (1.0, -2.0, 5.0):
        set_weight(model, value)
        ema.update(step=1)
        assert all(torch.equal(s, p) for s, p in zip(ema.shadow, model.parameters(), strict=True))


def test_known_sequence_gives_the_known_average() -> None:
    model = nn.Linear(1, 1)
    set_weight(model, 0.0)
    ema = EMA(model, decay=0.5)
    for step, value in enumerate((4.0, 8.0, 0.0), start=1):
        set_weight(model, value)
        ema.update(step)
    # 0 -> 0.5*0+0.5*4 = 2 -> 0.5*2+0.5*8 = 5 -> 0.5*5+0.5*0 = 2.5
    assert ema.state_dict()["weight"].item() == pytest.approx(2.5)


def test_before_start_step_the_shadow_follows_the_weights() -> None:
    model = nn.Linear(1, 1)
    ema = EMA(model, decay=0.9, start_step=3)
    set_weight(model, 7.0)
    ema.update(step=2)
    assert ema.state_dict()["weight"].item() == 7.0
    set_weight(model, 17.0)
    ema.update(step=3)
    assert ema.state_dict()["weight"].item() == pytest.approx(8.0)


def test_updates_in_place_and_swap_round_trips() -> None:
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.5)
    storage = [t.data_ptr() for t in ema.shadow]
    set_weight(model, 2.0)
    ema.update(1)
    assert [t.data_ptr() for t in ema.shadow] == storage
    before = [p.detach().clone() for p in model.parameters()]
    ema.swap()
    assert not torch.equal(model.weight, before[0])
    ema.swap()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_state_round_trip_and_mismatch() -> None:
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.5)
    state = {k: v + 1 for k, v in ema.state_dict().items()}
    ema.load_state_dict(state)
    assert torch.equal(ema.state_dict()["weight"], state["weight"])
    with pytest.raises(KeyError, match="does not match"):
        ema.load_state_dict({"weight": state["weight"]})
