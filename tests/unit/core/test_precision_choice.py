"""``train.dtype = "auto"`` on a CPU: bfloat16 autocast only where this CPU was measured clearly faster in it."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch

from ml_playground.core.devices import resolve_precision
from ml_playground.core.precision_choice import CACHE_FILE, MARGIN, cpu_autocast_dtype, measure

pytestmark = pytest.mark.unit


def timings(float32: float, bfloat16: float, calls: list[int]) -> Callable[[], Mapping[str, float]]:
    def measure_fn() -> Mapping[str, float]:
        calls.append(1)
        return {"float32": float32, "bfloat16": bfloat16}

    return measure_fn


def test_bfloat16_is_chosen_only_when_clearly_faster_and_the_answer_is_kept(tmp_path: Path) -> None:
    calls: list[int] = []
    slow = tmp_path / "no-bf16-cpu"
    assert cpu_autocast_dtype(slow, timings(1.0, 1.5, calls)) == torch.float32  # emulated bfloat16
    near = tmp_path / "near-tie"
    assert cpu_autocast_dtype(near, timings(MARGIN * 0.99, 1.0, calls)) == torch.float32
    amx = tmp_path / "amx"
    assert cpu_autocast_dtype(amx, timings(3.0, 1.0, calls)) == torch.bfloat16
    assert cpu_autocast_dtype(amx, timings(1.0, 3.0, calls)) == torch.bfloat16  # cached: not measured again
    assert len(calls) == 3
    entry = next(iter(json.loads((amx / CACHE_FILE).read_text()).values()))
    assert entry["choice"] == "bfloat16"
    assert entry["seconds"] == {"float32": 3.0, "bfloat16": 1.0}


def test_a_damaged_cache_only_costs_a_measurement(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILE).write_text("[1, 2]")
    calls: list[int] = []
    assert cpu_autocast_dtype(tmp_path, timings(3.0, 1.0, calls)) == torch.bfloat16
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert cpu_autocast_dtype(blocked, timings(1.0, 1.0, calls)) == torch.float32
    assert len(calls) == 2


def test_the_measurement_times_both_ways_on_a_real_product() -> None:
    seconds = measure(repeats=1, width=32, rows=16)
    assert set(seconds) == {"float32", "bfloat16"}
    assert all(value > 0 for value in seconds.values())


def test_auto_on_a_cpu_follows_the_measured_choice_and_explicit_dtypes_do_not_measure() -> None:
    assert resolve_precision("cpu", "auto", lambda: torch.bfloat16).dtype == torch.bfloat16
    assert resolve_precision("cpu", "auto", lambda: torch.float32).dtype == torch.float32

    def never() -> torch.dtype:
        raise AssertionError("measured for an explicit dtype")

    assert resolve_precision("cpu", "bfloat16", never).dtype == torch.bfloat16
    # frozen pretrained weights stay float32 on a CPU whatever autocast computes in
    assert resolve_precision("cpu", "bfloat16", never).weight_dtype == torch.float32
