"""The benchmark harness on tiny sizes: it runs, reports ratios and writes results.json."""

from __future__ import annotations

import pytest

from ml_playground.bench.harness import BenchResult, median_seconds, render_table

pytestmark = pytest.mark.unit


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
