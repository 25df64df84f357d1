from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from ml_playground.core.linear_kernels import MARGIN, LinearKernel, linear, onednn_available
from ml_playground.families.gpt.kernel_choice import (
    CACHE_FILE,
    Workload,
    choose_kernel,
    measure,
    pick_linear_kernel,
)

pytestmark = pytest.mark.unit


def fixed(aten: float, onednn: float, calls: list[Workload]) -> Callable[[Workload], dict[LinearKernel, float]]:
    def measure_fn(workload: Workload) -> dict[LinearKernel, float]:
        calls.append(workload)
        return {"aten": aten, "onednn": onednn}

    return measure_fn


def test_the_choice_is_measured_once_per_machine_and_shape_then_read_from_the_cache(tmp_path: Path) -> None:
    calls: list[Workload] = []
    decoding, training = Workload(384, 1, training=False), Workload(384, 1024, training=True)
    assert choose_kernel(decoding, cache_dir=tmp_path, measure_fn=fixed(1.0, 2.0, calls)) == "aten"
    assert choose_kernel(training, cache_dir=tmp_path, measure_fn=fixed(2.0, 1.0, calls)) == "onednn"
    # cached: a later, different measurement is not taken
    assert choose_kernel(decoding, cache_dir=tmp_path, measure_fn=fixed(9.0, 1.0, calls)) == "aten"
    assert calls == [decoding, training]
    cached = json.loads((tmp_path / CACHE_FILE).read_text())
    assert {entry["choice"] for entry in cached.values()} == {"aten", "onednn"}
    assert any(key.endswith("384 x 1 decode") for key in cached)


def test_a_near_tie_stays_on_the_default(tmp_path: Path) -> None:
    calls: list[Workload] = []
    slightly = fixed(MARGIN * 0.99, 1.0, calls)
    assert choose_kernel(Workload(128, 64, training=True), cache_dir=tmp_path, measure_fn=slightly) == "aten"


def test_a_damaged_or_unwritable_cache_only_costs_a_measurement(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILE).write_text("{not json")
    calls: list[Workload] = []
    assert choose_kernel(Workload(64, 8, False), cache_dir=tmp_path, measure_fn=fixed(3.0, 1.0, calls)) == "onednn"
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert choose_kernel(Workload(64, 8, False), cache_dir=blocked, measure_fn=fixed(1.0, 3.0, calls)) == "aten"
    assert len(calls) == 2


def test_settings_other_than_auto_are_not_measured() -> None:
    cpu = torch.device("cpu")
    workload = Workload(32, 4, training=False)

    def refuse(_: Workload) -> LinearKernel:
        raise AssertionError("measured")

    assert pick_linear_kernel("aten", cpu, workload, available=True, chooser=refuse) == "aten"
    assert pick_linear_kernel("onednn", cpu, workload, available=True, chooser=refuse) == "onednn"
    assert pick_linear_kernel("auto", cpu, workload, available=False, chooser=refuse) == "aten"
    assert pick_linear_kernel("auto", torch.device("cuda"), workload, available=True, chooser=refuse) == "aten"
    assert pick_linear_kernel("auto", cpu, workload, available=True, chooser=lambda _: "onednn") == "onednn"


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linear operator")
@pytest.mark.parametrize("training", [True, False])
def test_measure_times_both_kernels_on_the_block_products(training: bool) -> None:
    seconds = measure(Workload(16, 8, training), repeats=2)
    assert set(seconds) == {"aten", "onednn"}
    assert all(value > 0 for value in seconds.values())


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linear operator")
def test_measure_backpropagates_a_dense_gradient_as_training_does() -> None:
    # A stride-0 gradient (what ``out.sum().backward()`` passes) sends MKL's product down a slow path that
    # no training step takes, and once made this machine pick the slower kernel.
    strides: list[tuple[int, ...]] = []

    def recording(x: Tensor, weight: Tensor, bias: Tensor | None, kernel: LinearKernel) -> Tensor:
        out = linear(x, weight, bias, kernel)
        out.register_hook(lambda grad: strides.append(grad.stride()))  # type: ignore[no-untyped-call]
        return out

    measure(Workload(16, 8, training=True), repeats=1, product=recording)
    assert len(strides) == 2 * 3 * 2  # warm-up and one repeat, three products, two kernels
    assert all(0 not in stride for stride in strides)
