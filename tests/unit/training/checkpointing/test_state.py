"""The state map: one description of a run's stateful parts, read to save and to restore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.core.errors import CheckpointError
from ml_playground.training.checkpointing.service import LoadedCheckpoint
from ml_playground.training.checkpointing.state import RESTORE_ORDER, StateMap, StatePart

pytestmark = pytest.mark.unit


def test_parts_go_to_their_files_and_come_back_in_order(tmp_path: Path) -> None:
    restored: list[tuple[str, Any]] = []
    weights = {"w": torch.ones(2)}
    state_map = StateMap(
        {
            "model": StatePart("model", lambda: weights, lambda v: restored.append(("model", v))),
            "optimizer": StatePart("training", lambda: {"lr": 1}, lambda v: restored.append(("optimizer", v))),
            "loop": StatePart("json", lambda: {"step": 3}, lambda v: restored.append(("loop", v))),
            "scaler": StatePart("training", dict, lambda v: restored.append(("scaler", v)), required=False),
        }
    )
    payload = state_map.payload(3, config={}, model_config={"kind": "x"})
    assert payload.model is weights
    assert payload.training == {"optimizer": {"lr": 1}, "scaler": {}}
    assert payload.state == {"loop": {"step": 3}}
    assert payload.ema is None
    loaded = LoadedCheckpoint(tmp_path, {"step": 3}, weights, None, {"loop": {"step": 3}}, {"optimizer": {"lr": 1}})
    state_map.restore(loaded)  # the scaler is not in this (older) checkpoint: left as it is
    assert [name for name, _ in restored] == ["model", "optimizer", "loop"]


def test_a_missing_part_or_a_refusal_names_the_checkpoint(tmp_path: Path) -> None:
    def refuse(_: Any) -> None:
        raise CheckpointError("does not fit")

    needs_rng = StateMap({"rng": StatePart("training", dict, lambda _: None)})
    with pytest.raises(CheckpointError, match=rf"{tmp_path.name}: holds no 'rng' state"):
        needs_rng.restore(LoadedCheckpoint(tmp_path, {}, {}, None, {}, {}))
    refusing = StateMap({"loop": StatePart("json", dict, refuse)})
    with pytest.raises(CheckpointError, match=rf"{tmp_path.name}: does not fit"):
        refusing.restore(LoadedCheckpoint(tmp_path, {}, {}, None, {"loop": {}}, {}))
    with pytest.raises(ValueError, match="at most one part may live in 'model'"):
        StateMap({"a": StatePart("model", dict, refuse), "b": StatePart("model", dict, refuse)})


def test_parts_restore_in_the_stated_order_whatever_order_they_are_given(tmp_path: Path) -> None:
    restored: list[str] = []

    def part(name: str, store: Any) -> StatePart:
        return StatePart(store, dict, lambda _: restored.append(name))

    stores = {"model": "model", "ema": "ema", "loop": "json", "hooks": "json", "sampler": "json"}
    given = ["sampler", "rng", "ema", "loop", "optimizer", "hooks", "scaler", "model"]
    state_map = StateMap({name: part(name, stores.get(name, "training")) for name in given})
    training = {name: {} for name in ("optimizer", "scaler", "rng")}
    state = {name: {} for name in ("loop", "hooks", "sampler")}
    state_map.restore(LoadedCheckpoint(tmp_path, {}, {"w": torch.ones(1)}, {"w": torch.ones(1)}, state, training))
    assert restored == list(RESTORE_ORDER)
    with pytest.raises(ValueError, match="'extra' has no place in RESTORE_ORDER"):
        StateMap({"extra": part("extra", "json")})
