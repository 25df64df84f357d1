"""MLflow and Weights & Biases as optional trackers: real runs written locally, read back with the libraries."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from ml_playground.commands.train import train
from ml_playground.data_pipeline.preparer import prepare
from tests.conftest import ConfigFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run(config_factory: ConfigFactory, *settings: str) -> str:
    config = config_factory(*settings)
    prepare(config.prepare)
    said = io.StringIO()
    train(config, console=Console(file=said, width=200))
    return said.getvalue()


def test_mlflow_gets_the_metrics_and_the_config(
    tiny_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the logger sets it for its own file store
    from mlflow.tracking import MlflowClient

    said = run(tiny_config, "train.trackers.mlflow=true", "train.sample_during_training.every_evals=1")
    assert "warning" not in said
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("ml_playground")
    assert experiment is not None
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.params["train.max_iters"] == "30"
    assert found.data.params["train.model.n_layer"] == "2"
    history = client.get_metric_history(found.info.run_id, "val_loss")
    assert [m.step for m in history] == [0, 10, 20, 30]
    written = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
    assert len(written) == len(history)  # the same evaluations as metrics.jsonl and TensorBoard
    samples = [a.path for a in client.list_artifacts(found.info.run_id)]
    assert samples  # the samples drawn during training, as text


def test_wandb_writes_an_offline_run(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    said = run(tiny_config, "train.trackers.wandb=true", "train.max_iters=10")
    assert "warning" not in said
    runs = list((tmp_path / "run" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))


def test_a_tracker_that_cannot_start_is_one_warning(tiny_config: ConfigFactory) -> None:
    said = run(
        tiny_config,
        "train.trackers.mlflow=true",
        "train.trackers.mlflow_tracking_uri='nosuch://x'",
        "train.max_iters=5",
    )
    warnings = [line for line in said.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: the mlflow tracker did not start (")
    assert warnings[0].endswith("training goes on without it")
