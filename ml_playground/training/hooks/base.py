"""The events the loop emits and the base class hooks subscribe with.

The loop calls every hook at each event in order and knows none of them by name. A hook that
keeps state across a resume (best loss, patience counter) names it with ``state_key``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ml_playground.training.context import EvalResult, TrainingContext

__all__ = ["EvalResult", "Hook"]


class Hook:
    state_key: str | None = None

    def on_train_start(self, ctx: TrainingContext) -> None:
        """Called once before the first step (also after a resume)."""

    def on_step_end(self, ctx: TrainingContext) -> None:
        """Called after each optimizer step."""

    def on_eval_end(self, ctx: TrainingContext, result: EvalResult) -> None:
        """Called when an evaluation hook reports a result."""

    def on_checkpoint_saved(self, ctx: TrainingContext, path: Path) -> None:
        """Called after a checkpoint folder is complete on disk."""

    def on_train_end(self, ctx: TrainingContext) -> None:
        """Called once when the loop ends: max_iters reached or a stop requested."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
