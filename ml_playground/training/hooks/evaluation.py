"""Evaluate at the start (step 0: the reference a run is judged by), every ``interval`` steps and at the end:
validation split, train estimate, EMA. An evaluation cut short by a stop signal is dropped."""

from __future__ import annotations

from collections.abc import Callable

from ml_playground.training.context import EvalResult, Hook, TrainingContext
from ml_playground.training.evaluation import EvaluationInterrupted

SplitEvaluator = Callable[[], tuple[float, int]]


class EvaluationHook(Hook):
    def __init__(
        self,
        *,
        interval: int,
        evaluate_val: SplitEvaluator,
        estimate_train: Callable[[], float] | None = None,
        at_start: bool = False,
    ) -> None:
        self.interval = interval
        self.evaluate_val = evaluate_val
        self.estimate_train = estimate_train
        self.at_start = at_start

    def on_train_start(self, ctx: TrainingContext) -> None:
        if self.at_start and ctx.state.step == 0:
            self._emit(ctx)

    def on_step_end(self, ctx: TrainingContext) -> None:
        step = ctx.state.step
        if step % self.interval == 0 or step == ctx.max_iters:
            self._emit(ctx)

    def _emit(self, ctx: TrainingContext) -> None:
        try:
            result = self.evaluate(ctx)
        except EvaluationInterrupted:
            return
        ctx.emit_eval(result)

    def evaluate(self, ctx: TrainingContext) -> EvalResult:
        val_loss, val_tokens = self.evaluate_val()
        train_loss = self.estimate_train() if self.estimate_train is not None else None
        ema_val_loss = None
        if ctx.ema is not None:
            ctx.ema.swap()
            try:
                ema_val_loss, _ = self.evaluate_val()
            finally:
                ctx.ema.swap()
        return EvalResult(ctx.state.step, val_loss, val_tokens, train_loss, ema_val_loss)
