"""The benchmark harness on tiny sizes: it runs, reports ratios and writes results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_playground.bench.harness import BenchResult, median_seconds, render_table
from ml_playground.bench.runner import run_benchmarks

pytestmark = [pytest.mark.unit, pytest.mark.slow]


def test_ratios_and_targets() -> None:
    faster = BenchResult("x", 30.0, "tokens/s", "peer", 20.0, target=1.3)
    assert faster.ratio == pytest.approx(1.5)
    assert faster.passed is True
    slower_time = BenchResult("t", 50.0, "s", "peer", 100.0, target=2.0, higher_is_better=False)
    assert slower_time.ratio == pytest.approx(2.0)
    assert slower_time.passed is True
    no_peer = BenchResult("m", 700.0, "MiB", target=600, higher_is_better=False)
    assert no_peer.ratio is None
    assert no_peer.passed is False
    assert BenchResult("n", 1.0, "u").passed is None
    absolute = BenchResult("s", 50.0, "s", "peer", 80.0, target=70.0, higher_is_better=False, target_is_ratio=False)
    assert absolute.ratio == pytest.approx(1.6)
    assert absolute.passed is True
    table = render_table([faster, slower_time, no_peer])
    assert "1.50" in table
    assert "NO" in table
    assert median_seconds(lambda: None, warmup=0, repeats=3) >= 0


def test_quick_run_writes_every_result(tmp_path: Path, shared_data: Path) -> None:
    lines: list[str] = []
    results = run_benchmarks(
        shakespeare=shared_data / "shakespeare" / "input.txt",
        bundestag=shared_data / "bundestag",
        results_path=tmp_path / "results.json",
        quick=True,
        emit=lines.append,
    )
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["machine"]["torch_threads"] >= 1
    names = [r["name"] for r in written["results"]]
    assert names == [r.name for r in results]
    assert any("vs HF GPT2LMHeadModel" in n for n in names)
    assert any("KV cache" in n for n in names)
    assert any(n.startswith("prepare char") for n in names)
    assert any(n.startswith("speedrun") for n in names)
    assert any(n.startswith("peak RSS, default Shakespeare training") for n in names)
    hf = next(r for r in written["results"] if "vs HF GPT2LMHeadModel" in r["name"])
    assert hf["peer_figure"] > 0
    assert hf["ratio"] == pytest.approx(hf["figure"] / hf["peer_figure"])
    assert "wrote" in lines[-1]
