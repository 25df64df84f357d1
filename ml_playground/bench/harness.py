"""Timing and reporting for ``make bench``: warm-up, repetitions, medians, ratios against a peer.

Absolute times on a shared machine drift, so every figure that has a peer is reported as a
ratio against it, both measured in the same process, interleaved.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ml_playground.core.atomic import atomic_write_text
from ml_playground.core.machine import cpu_facts


@dataclass(frozen=True)
class BenchResult:
    name: str
    figure: float
    unit: str
    peer: str | None = None
    peer_figure: float | None = None
    target: float | None = None  # the acceptable ratio, or figure when target_is_ratio is False
    higher_is_better: bool = True
    note: str = ""
    target_is_ratio: bool = True

    @property
    def ratio(self) -> float | None:
        if self.peer_figure is None or self.peer_figure == 0:
            return None
        return self.figure / self.peer_figure if self.higher_is_better else self.peer_figure / self.figure

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        if self.target_is_ratio and self.ratio is not None:
            return self.ratio >= self.target
        return self.figure >= self.target if self.higher_is_better else self.figure <= self.target

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "passed": self.passed}


def median_seconds(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def paired_medians(
    ours: Callable[[], object], peer: Callable[[], object], *, warmup: int = 1, repeats: int = 5
) -> tuple[float, float]:
    """Median seconds of each, measured alternately so that drift hits both alike."""
    for _ in range(warmup):
        ours()
        peer()
    ours_times: list[float] = []
    peer_times: list[float] = []
    for _ in range(repeats):
        for fn, times in ((ours, ours_times), (peer, peer_times)):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return statistics.median(ours_times), statistics.median(peer_times)


def machine_info(matmul_peaks: dict[str, float] | None = None) -> dict[str, Any]:
    """What a figure in the table is a fact about: this CPU, its ISA, its measured matmul peaks, threads."""
    model, isa = cpu_facts()
    return {
        "cpu": model,
        "isa": isa,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "matmul_gflops": {name: round(flops / 1e9, 1) for name, flops in (matmul_peaks or {}).items()},
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def render_machine(info: dict[str, Any]) -> str:
    peaks = ", ".join(f"{name} {gflops:g}" for name, gflops in info.get("matmul_gflops", {}).items())
    return "\n".join(
        [
            f"machine: {info['cpu']} ({info['cpu_count']} CPUs, torch {info['torch']}, "
            f"{info['torch_threads']} threads)",
            f"ISA: {' '.join(info['isa']) or '-'}; float32 matmul peak GFLOP/s: {peaks or '-'}",
            "Absolute figures are facts about this box on this day; the targets are ratios against a peer measured "
            "in the same run.",
        ]
    )


def render_table(results: list[BenchResult]) -> str:
    header = f"{'benchmark':<46} {'figure':>14} {'unit':<12} {'peer':>14} {'ratio':>7} {'target':>7}  ok"
    lines = [header, "-" * len(header)]
    for r in results:
        peer = f"{r.peer_figure:,.2f}" if r.peer_figure is not None else "-"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        target = f"{r.target:g}" if r.target is not None else "-"
        ok = {True: "yes", False: "NO", None: ""}[r.passed]
        lines.append(f"{r.name:<46} {r.figure:>14,.2f} {r.unit:<12} {peer:>14} {ratio:>7} {target:>7}  {ok}")
        if r.peer or r.note:
            lines.append(f"    {('peer: ' + r.peer) if r.peer else ''}{'; ' if r.peer and r.note else ''}{r.note}")
    return "\n".join(lines)


def write_results(results: list[BenchResult], path: Path, machine: dict[str, Any] | None = None) -> None:
    payload = {"machine": machine or machine_info(), "results": [r.to_dict() for r in results]}
    atomic_write_text(path, json.dumps(payload, indent=2))
