"""Send step and evaluation metrics to the logger; draw ``loss.png`` at the end."""

from __future__ import annotations

from pathlib import Path

from ml_playground.core.logging_protocol import MetricsLogger
from ml_playground.training.context import EvalResult, Hook, HookPhase, TrainingContext
from ml_playground.training.plots import plot_losses


class LoggingHook(Hook):
    phase = HookPhase.REPORT

    def __init__(
        self,
        *,
        logger: MetricsLogger,
        log_interval: int,
        metrics_path: Path | None = None,
        plot_path: Path | None = None,
    ) -> None:
        self.logger = logger
        self.log_interval = log_interval
        self.metrics_path = metrics_path
        self.plot_path = plot_path

    def on_step_end(self, ctx: TrainingContext) -> None:
        step, metrics = ctx.state.step, ctx.last_step
        if metrics is None or (step % self.log_interval and step != ctx.max_iters):
            return
        self.logger.log_metrics(
            step,
            {
                "train_loss": metrics.loss,
                "lr": metrics.lr,
                "tokens_per_second": metrics.tokens_per_second,
                "grad_norm": metrics.grad_norm,
                "elapsed_s": ctx.state.elapsed_s,
            },
        )

    def on_eval_end(self, ctx: TrainingContext, result: EvalResult) -> None:
        record = {"val_loss": result.val_loss, "elapsed_s": ctx.state.elapsed_s}
        if result.train_loss is not None:
            record["train_loss_eval"] = result.train_loss
        if result.ema_val_loss is not None:
            record["ema_val_loss"] = result.ema_val_loss
        if ctx.last_step is not None:
            record["lr"] = ctx.last_step.lr
            record["tokens_per_second"] = ctx.last_step.tokens_per_second
        self.logger.log_metrics(result.step, record)

    def on_train_end(self, ctx: TrainingContext) -> None:
        self.logger.close()
        if self.metrics_path is not None and self.plot_path is not None and self.metrics_path.is_file():
            plot_losses(self.metrics_path, self.plot_path)
