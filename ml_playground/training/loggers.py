"""The three metric sinks, all on by default: console, ``metrics.jsonl`` and TensorBoard."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from torch.utils.tensorboard import SummaryWriter

from ml_playground.core.atomic import atomic_write_text
from ml_playground.core.logging_protocol import MetricsLogger


def _format_metrics(metrics: Mapping[str, float]) -> str:
    parts = []
    for key in ("train_loss", "val_loss", "ema_val_loss", "train_loss_eval"):
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.4f}")
    if "lr" in metrics:
        parts.append(f"lr {metrics['lr']:.2e}")
    if "tokens_per_second" in metrics:
        parts.append(f"{metrics['tokens_per_second']:,.0f} tok/s")
    return " | ".join(parts)


class ConsoleLogger:
    """A progress bar on a terminal; plain lines in CI logs and pipes; nothing when quiet."""

    def __init__(self, *, total_steps: int, start_step: int, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.total_steps = total_steps
        self.start_step = start_step
        self._started = time.perf_counter()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if console.is_terminal and not quiet:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[metrics]}"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, metrics="")
            self._progress.start()

    def _eta_s(self, step: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self._started) / done * (self.total_steps - step)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.quiet:
            return
        line = _format_metrics(metrics)
        is_eval = "val_loss" in metrics
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=step, metrics=line if not is_eval else "")
            if is_eval:
                self._progress.console.print(f"step {step}: {line}", highlight=False)
            return
        eta = self._eta_s(step)
        eta_text = f" | ETA {eta:.0f}s" if not is_eval and eta == eta else ""
        self.console.print(f"step {step}/{self.total_steps} | {line}{eta_text}", highlight=False, soft_wrap=True)

    def log_text(self, step: int, tag: str, text: str) -> None:
        if not self.quiet:
            self.console.print(
                f"--- {tag} at step {step} ---\n{text}\n---", highlight=False, markup=False, soft_wrap=True
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class JsonlLogger:
    """One JSON object per logged step in ``metrics.jsonl``; on resume, lines past the checkpoint go."""

    def __init__(self, path: Path, *, resume_step: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if resume_step is not None and path.is_file():
            for line in path.read_text("utf-8").splitlines():
                try:
                    if int(json.loads(line)["step"]) <= resume_step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        self._handle: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._handle is not None:
            self._handle.write(json.dumps({"step": step, **metrics}) + "\n")
            self._handle.flush()

    def log_text(self, step: int, tag: str, text: str) -> None:
        """Text stays out of the metrics file."""

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class TensorBoardLogger:
    """Event files under ``out_dir/tb``; on resume, events past the checkpoint are purged."""

    def __init__(self, log_dir: Path, *, purge_step: int | None = None) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        self._closed = False

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        names = {
            "train_loss": "loss/train",
            "val_loss": "loss/val",
            "ema_val_loss": "loss/val_ema",
            "train_loss_eval": "loss/train_eval",
            "lr": "lr",
            "tokens_per_second": "tokens_per_second",
            "grad_norm": "grad_norm",
        }
        for key, value in metrics.items():
            if key in names:
                self.writer.add_scalar(names[key], value, step)

    def log_text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        if not self._closed:
            self.writer.close()
            self._closed = True


class CompositeLogger:
    def __init__(self, loggers: Sequence[MetricsLogger]) -> None:
        self.loggers = list(loggers)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for logger in self.loggers:
            logger.log_metrics(step, metrics)

    def log_text(self, step: int, tag: str, text: str) -> None:
        for logger in self.loggers:
            logger.log_text(step, tag, text)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
