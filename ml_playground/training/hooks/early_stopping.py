"""Stop when the validation loss has not improved for ``patience`` evaluations, or reached a target."""

from __future__ import annotations

import math
from typing import Any

from ml_playground.training.context import EvalResult, Hook, TrainingContext


class EarlyStoppingHook(Hook):
    state_key = "early_stopping"

    def __init__(self, *, patience: int | None, target_val_loss: float | None) -> None:
        self.patience = patience
        self.target_val_loss = target_val_loss
        self.best = math.inf
        self.evals_without_improvement = 0

    def on_eval_end(self, ctx: TrainingContext, result: EvalResult) -> None:
        if result.step == 0:  # before training: nothing to stop
            return
        if self.target_val_loss is not None and result.val_loss <= self.target_val_loss:
            ctx.request_stop(
                f"validation loss {result.val_loss:.4f} reached the target {self.target_val_loss} at step {result.step}"
            )
        if result.val_loss < self.best:
            self.best = result.val_loss
            self.evals_without_improvement = 0
            return
        self.evals_without_improvement += 1
        if self.patience is not None and self.evals_without_improvement >= self.patience:
            ctx.request_stop(f"no improvement in validation loss for {self.patience} evaluations")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "evals_without_improvement": self.evals_without_improvement}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.evals_without_improvement = int(state["evals_without_improvement"])
