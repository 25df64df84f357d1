"""Muon's Newton-Schulz iteration: in bfloat16 as torch.optim.Muon, or in float32 where this CPU is faster in it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from ml_playground.configuration.models import OptimConfig
from ml_playground.families.gpt.model import GPT, GPTConfig
from ml_playground.training.newton_schulz import CACHE_FILE, CLIP, MARGIN, measure, newton_schulz_dtype, orthogonalise
from ml_playground.training.optim import GroupedMuon, MuonWithAdamW, build_optimizer

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")
SHAPES = [(48, 16), (48, 16), (16, 64)]


class Timings:
    """A measurement that records the shapes it was asked for and answers fixed seconds."""

    def __init__(self, float32: float, bfloat16: float) -> None:
        self.seconds = {"float32": float32, "bfloat16": bfloat16}
        self.asked: list[list[tuple[int, int]]] = []

    def __call__(self, shapes: list[tuple[int, int]]) -> Mapping[str, float]:
        self.asked.append(shapes)
        return self.seconds


def test_bfloat16_only_where_clearly_faster_measured_once_per_shapes(tmp_path: Path) -> None:
    emulated = Timings(float32=1.0, bfloat16=2.4)  # a CPU without bfloat16 instructions
    assert newton_schulz_dtype("auto", SHAPES, CPU, tmp_path / "a", emulated) == torch.float32
    assert emulated.asked == [[(16, 64), (48, 16)]]  # one matrix of each distinct shape
    near = Timings(float32=MARGIN * 0.99, bfloat16=1.0)
    assert newton_schulz_dtype("auto", SHAPES, CPU, tmp_path / "b", near) == torch.float32
    native = Timings(float32=1.8, bfloat16=1.0)
    assert newton_schulz_dtype("auto", SHAPES, CPU, tmp_path / "c", native) == torch.bfloat16
    assert newton_schulz_dtype("auto", SHAPES, CPU, tmp_path / "c", emulated) == torch.bfloat16  # cached
    assert len(emulated.asked) == 1
    assert newton_schulz_dtype("auto", [(8, 8)], CPU, tmp_path / "c", emulated) == torch.float32  # other shapes
    assert newton_schulz_dtype("auto", [(2304, 768), (16, 16)], CPU, tmp_path / "d", emulated) == torch.float32
    assert emulated.asked[-1] == [(16, 16), (CLIP, CLIP)]  # large sides timed at CLIP
    entries = json.loads((tmp_path / "c" / CACHE_FILE).read_text())
    assert [entry["choice"] for entry in entries.values()] == ["bfloat16", "float32"]


def test_explicit_settings_other_devices_and_no_matrices_do_not_measure(tmp_path: Path) -> None:
    never = Timings(float32=1.0, bfloat16=9.0)
    assert newton_schulz_dtype("bfloat16", SHAPES, CPU, tmp_path, never) == torch.bfloat16
    assert newton_schulz_dtype("float32", SHAPES, CPU, tmp_path, never) == torch.float32
    assert newton_schulz_dtype("auto", SHAPES, torch.device("meta"), tmp_path, never) == torch.bfloat16
    assert newton_schulz_dtype("auto", [], CPU, tmp_path, never) == torch.bfloat16
    assert never.asked == []
    assert not (tmp_path / CACHE_FILE).exists()


def test_the_measurement_times_both_precisions_on_real_matrices() -> None:
    seconds = measure([(8, 24), (24, 8)], repeats=1)
    assert set(seconds) == {"bfloat16", "float32"}
    assert all(value > 0 for value in seconds.values())


def test_float32_orthogonalises_closer_to_exact_arithmetic_than_bfloat16() -> None:
    torch.manual_seed(3)
    stack = torch.randn(3, 40, 24)  # tall: transposed and back
    exact = orthogonalise(stack.double(), (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float64)
    single = orthogonalise(stack, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32)
    half = orthogonalise(stack, (3.4445, -4.775, 2.0315), 5, 1e-7)
    assert single.dtype == torch.float32
    assert half.dtype == torch.bfloat16
    assert single.shape == stack.shape
    single_error = float((single.double() - exact).abs().max())
    half_error = float((half.double() - exact).abs().max())
    assert single_error < 1e-5 < half_error


def test_grouped_muon_steps_in_the_chosen_precision() -> None:
    torch.manual_seed(5)
    start = torch.randn(48, 16)
    steps = {}
    for dtype in (torch.float32, torch.bfloat16):
        param = torch.nn.Parameter(start.clone())
        param.grad = torch.ones_like(param) + torch.arange(16.0)
        GroupedMuon([param], lr=0.1, newton_schulz_dtype=dtype).step()
        steps[dtype] = param.detach() - start
    reference = torch.nn.Parameter(start.clone())
    reference.grad = torch.ones_like(reference) + torch.arange(16.0)
    torch.optim.Muon([reference], lr=0.1).step()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(steps[torch.bfloat16], reference.detach() - start, rtol=0, atol=1e-6)
    assert not torch.allclose(steps[torch.float32], steps[torch.bfloat16], rtol=0, atol=1e-6)
    torch.testing.assert_close(steps[torch.float32], steps[torch.bfloat16], rtol=0, atol=0.02)


def test_the_config_setting_reaches_the_optimizer() -> None:
    model = GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16, tie_weights=False))
    for setting, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        optimizer = build_optimizer(model, OptimConfig(name="muon", muon_precision=setting), CPU)
        assert isinstance(optimizer, MuonWithAdamW)
        assert isinstance(optimizer.muon, GroupedMuon)
        assert optimizer.muon.newton_schulz_dtype == dtype
