"""The process benchmarks on tiny budgets: real CLI runs, parsed figures, measured memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.bench.process_benchmarks import prepare_memory, run_train
from ml_playground.configuration.models import PrepareConfig
from ml_playground.data_pipeline.preparer import prepare

pytestmark = [pytest.mark.unit, pytest.mark.slow]


@pytest.fixture
def dataset(tmp_path: Path, shakespeare_slice: Path) -> Path:
    prepare(PrepareConfig(input_path=str(shakespeare_slice), dataset_dir=tmp_path / "ds"))
    return tmp_path / "ds"


def test_failed_runs_are_reported(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="benchmark run failed"):
        run_train(["shakespeare", "--set", "train.max_iters=0"], tmp_path)


def test_prepare_memory_on_a_small_file(tmp_path: Path, shakespeare_text: str) -> None:
    result = prepare_memory(shakespeare_text[:100_000], tmp_path, size_mb=2, target_mib=4096)
    assert 50 < result.figure < 4096
    assert result.passed is True
    assert not (tmp_path / "big.txt").exists()
    assert (tmp_path / "big-dataset" / "train.bin").is_file()
