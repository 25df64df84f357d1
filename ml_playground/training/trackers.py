"""Optional experiment trackers beside TensorBoard: MLflow (a local file store, no server) and Weights & Biases
(offline mode). Off by default; each is a dependency group of its own (`uv sync --group trackers`).

They log what TensorBoard gets (the same metrics at the same steps, and the samples drawn during
training as text) plus the whole config. A tracker is a guest: one that cannot start, or that fails
later, costs one warning line and training goes on without it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ml_playground.core.logging_protocol import MetricsLogger


def flatten(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``{"train": {"optim": {"lr": 1}}}`` -> ``("train.optim.lr", "1")``: MLflow parameters are flat strings."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        else:
            yield name, str(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class MlflowLogger:
    """One MLflow run per training process, in ``tracking_uri`` (default: ``out_dir/mlruns``, a file store)."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if tracking_uri.startswith("file:"):
            # MLflow 3 keeps its file store "in maintenance mode" and refuses it unless this is set; a folder
            # of plain files needs no database or server, which is the point here (a sqlite:// URI works too).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        self.run_id: str = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        params = [Param(key, value[:6000]) for key, value in flatten(config)]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_text(self, step: int, tag: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"{tag.replace('/', '_')}/step_{step:08d}.txt")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbLogger:
    """A Weights & Biases run in offline mode under ``directory`` (``wandb sync`` uploads it later)."""

    def __init__(self, directory: Path, project: str, run_name: str, config: Mapping[str, Any]) -> None:
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project, name=run_name, dir=str(directory), mode="offline", config=dict(config), reinit=True
        )

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def log_text(self, step: int, tag: str, text: str) -> None:
        self.run.log({tag: text}, step=step)

    def close(self) -> None:
        self.run.finish()


class Guarded:
    """A tracker whose failures become one warning, after which it is left out."""

    def __init__(self, name: str, inner: MetricsLogger, warn: Callable[[str], None]) -> None:
        self.name, self.inner, self.warn = name, inner, warn
        self.failed = False

    def _call(self, action: Callable[[], None]) -> None:
        if self.failed:
            return
        try:
            action()
        except Exception as exc:  # a tracker's own trouble (disk, its service) must not stop training
            self.failed = True
            self.warn(f"warning: the {self.name} tracker failed ({_first_line(exc)}); training goes on without it")

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._call(lambda: self.inner.log_metrics(step, metrics))

    def log_text(self, step: int, tag: str, text: str) -> None:
        self._call(lambda: self.inner.log_text(step, tag, text))

    def close(self) -> None:
        self._call(self.inner.close)


Factory = Callable[[], MetricsLogger]


def start_trackers(factories: Mapping[str, Factory], warn: Callable[[str], None]) -> list[MetricsLogger]:
    """Each tracker that starts, guarded; one that does not start is one warning line."""
    started: list[MetricsLogger] = []
    for name, factory in factories.items():
        try:
            started.append(Guarded(name, factory(), warn))
        except Exception as exc:  # not installed, a bad URI, an unwritable folder: all mean "go on without it"
            warn(f"warning: the {name} tracker did not start ({_first_line(exc)}); training goes on without it")
    return started
