from __future__ import annotations

from collections.abc import Mapping

import pytest

from ml_playground.training.trackers import Guarded, flatten, start_trackers

pytestmark = pytest.mark.unit


class FullDisk:
    """A tracker whose writes fail the way a full disk makes them fail."""

    def __init__(self) -> None:
        self.calls = 0

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.calls += 1
        raise OSError(28, "No space left on device")

    def log_text(self, step: int, tag: str, text: str) -> None:
        self.calls += 1

    def close(self) -> None:
        self.calls += 1


def test_a_failing_tracker_warns_once_and_is_left_out() -> None:
    warnings: list[str] = []
    inner = FullDisk()
    guarded = Guarded("mlflow", inner, warnings.append)
    guarded.log_metrics(1, {"train_loss": 1.0})
    guarded.log_metrics(2, {"train_loss": 1.0})
    guarded.log_text(2, "sample", "x")
    guarded.close()
    assert inner.calls == 1
    assert warnings == [
        "warning: the mlflow tracker failed (OSError: [Errno 28] No space left on device); training goes on without it"
    ]


def test_a_tracker_that_cannot_start_is_one_warning_and_the_others_start() -> None:
    warnings: list[str] = []

    def broken() -> FullDisk:
        raise ModuleNotFoundError("No module named 'mlflow'")

    started = start_trackers({"mlflow": broken, "other": FullDisk}, warnings.append)
    assert [t.name for t in started if isinstance(t, Guarded)] == ["other"]
    assert warnings == [
        "warning: the mlflow tracker did not start (ModuleNotFoundError: No module named 'mlflow'); "
        "training goes on without it"
    ]


def test_the_config_is_flattened_into_dotted_string_parameters() -> None:
    assert dict(flatten({"train": {"optim": {"lr": 0.001}, "seed": 1}, "name": "x"})) == {
        "train.optim.lr": "0.001",
        "train.seed": "1",
        "name": "x",
    }
