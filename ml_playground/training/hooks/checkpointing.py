"""Write ``last`` every ``interval`` steps and at the end, and ``best`` when validation improves."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ml_playground.training.checkpointing.service import CheckpointPayload, CheckpointService
from ml_playground.training.context import EvalResult, Hook, HookPhase, TrainingContext


class CheckpointHook(Hook):
    phase = HookPhase.PERSIST
    state_key = "checkpointing"

    def __init__(
        self,
        *,
        service: CheckpointService,
        interval: int,
        build_payload: Callable[[TrainingContext], CheckpointPayload],
        write: bool = True,
    ) -> None:
        self.service = service
        self.write = write  # distributed runs: every rank builds the payload (a gather under fsdp), rank 0 writes
        self.interval = interval
        self.build_payload = build_payload
        self.best_val_loss = math.inf
        self._best_pending = False
        self._last_saved_step: int | None = None

    def on_train_start(self, ctx: TrainingContext) -> None:
        self._last_saved_step = ctx.state.step if ctx.state.step > 0 else None

    def on_eval_end(self, ctx: TrainingContext, result: EvalResult) -> None:
        if result.step == 0:  # the untrained model's loss is a reference, not a checkpoint to keep
            return
        if result.val_loss < self.best_val_loss:
            self.best_val_loss = result.val_loss
            self._best_pending = True

    def on_step_end(self, ctx: TrainingContext) -> None:
        if ctx.state.step % self.interval == 0 or self._best_pending:
            self._save(ctx)

    def on_train_end(self, ctx: TrainingContext) -> None:
        if ctx.state.step > 0 and self._last_saved_step != ctx.state.step:
            self._save(ctx)

    def _save(self, ctx: TrainingContext) -> None:
        tags = {"last", "best"} if self._best_pending else {"last"}
        self._best_pending = False
        self._last_saved_step = ctx.state.step
        payload = self.build_payload(ctx)
        if self.write:
            ctx.emit_checkpoint_saved(self.service.save(payload, tags))

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_loss": self.best_val_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_val_loss = float(state["best_val_loss"])
