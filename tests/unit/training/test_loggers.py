from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ml_playground.training.loggers import CompositeLogger, ConsoleLogger, JsonlLogger, TensorBoardLogger
from ml_playground.training.plots import plot_losses

pytestmark = pytest.mark.unit


def test_jsonl_resume_drops_lines_past_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    logger = JsonlLogger(path)
    for step in (10, 20, 30):
        logger.log_metrics(step, {"train_loss": step / 10})
    logger.log_text(30, "sample", "not a metric")
    logger.close()
    logger.close()
    with path.open("a") as handle:
        handle.write('{"step": 4')  # a line cut short by SIGKILL
    resumed = JsonlLogger(path, resume_step=20)
    resumed.log_metrics(30, {"train_loss": 9.0})
    resumed.close()
    resumed.log_metrics(40, {"train_loss": 1.0})  # after close: ignored
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [
        {"step": 10, "train_loss": 1.0},
        {"step": 20, "train_loss": 2.0},
        {"step": 30, "train_loss": 9.0},
    ]
    JsonlLogger(path).close()
    assert path.read_text() == ""


def test_tensorboard_event_files_hold_the_scalars_and_text(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path / "tb")
    for step in (1, 2, 3):
        logger.log_metrics(step, {"train_loss": 3.0 - step, "lr": 0.1, "elapsed_s": 1.0})
    logger.log_metrics(3, {"val_loss": 0.5, "tokens_per_second": 100.0, "grad_norm": 1.0})
    logger.log_text(3, "sample", "hello")
    logger.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"loss/train", "loss/val", "lr", "tokens_per_second", "grad_norm"} <= set(scalars)
    assert "elapsed_s" not in scalars
    assert [e.value for e in events.Scalars("loss/train")] == [2.0, 1.0, 0.0]
    assert events.Scalars("loss/val")[0].step == 3


def test_console_plain_lines_when_not_a_terminal() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    logger = ConsoleLogger(total_steps=100, start_step=0, console=console)
    logger.log_metrics(10, {"train_loss": 2.5, "lr": 1e-3, "tokens_per_second": 12345.0})
    logger.log_metrics(10, {"val_loss": 2.4, "train_loss_eval": 2.3, "ema_val_loss": 2.35})
    logger.log_text(10, "sample", "[bold]ROMEO[/bold]")
    logger.close()
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("step 10/100 | train_loss 2.5000 | lr 1.00e-03 | 12,345 tok/s | ETA ")
    assert lines[1] == "step 10/100 | val_loss 2.4000 | ema_val_loss 2.3500 | train_loss_eval 2.3000"
    assert "[bold]ROMEO[/bold]" in buffer.getvalue()
    assert "\x1b[" not in buffer.getvalue()


def test_console_eta_unknown_before_the_first_step() -> None:
    buffer = io.StringIO()
    logger = ConsoleLogger(total_steps=10, start_step=5, console=Console(file=buffer, force_terminal=False))
    logger.log_metrics(5, {"train_loss": 1.0})
    assert "ETA" not in buffer.getvalue()


def test_console_progress_bar_on_a_terminal_and_quiet_mode() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    logger = ConsoleLogger(total_steps=50, start_step=0, console=console)
    logger.log_metrics(25, {"train_loss": 2.0})
    logger.log_metrics(25, {"val_loss": 1.5})
    logger.close()
    logger.close()
    output = buffer.getvalue()
    assert "25/50" in output
    assert "step 25: val_loss 1.5000" in output
    silent = io.StringIO()
    quiet = ConsoleLogger(total_steps=50, start_step=0, console=Console(file=silent, force_terminal=True), quiet=True)
    quiet.log_metrics(1, {"train_loss": 2.0})
    quiet.log_text(1, "sample", "x")
    quiet.close()
    assert silent.getvalue() == ""


def test_composite_fans_out(tmp_path: Path) -> None:
    a, b = JsonlLogger(tmp_path / "a.jsonl"), JsonlLogger(tmp_path / "b.jsonl")
    both = CompositeLogger([a, b])
    both.log_metrics(1, {"val_loss": 1.0})
    both.log_text(1, "t", "x")
    both.close()
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text() != ""


def test_plot_needs_losses(tmp_path: Path) -> None:
    metrics = tmp_path / "m.jsonl"
    metrics.write_text(json.dumps({"step": 1, "lr": 0.1}) + "\n")
    assert plot_losses(metrics, tmp_path / "loss.png") is False
    assert not (tmp_path / "loss.png").exists()
    metrics.write_text(json.dumps({"step": 1, "val_loss": 2.0}) + "\n")
    assert plot_losses(metrics, tmp_path / "loss.png") is True
