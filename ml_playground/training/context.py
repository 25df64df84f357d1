"""What the loop and its hooks share: the counters that survive a resume and the context hooks see."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml_playground.training.ema import EMA


@dataclass(frozen=True)
class EvalResult:
    step: int
    val_loss: float
    val_tokens: int
    train_loss: float | None = None
    ema_val_loss: float | None = None


class HookPhase(IntEnum):
    """When a hook hears an event, relative to the others; within a phase, in the order they were given.

    A checkpoint stores every hook's state, so the hooks that change state on an evaluation (early
    stopping's patience, the sampler's counter) must hear it before the checkpoint hook writes, and the
    log should report a checkpoint that is on disk.
    """

    OBSERVE = 0  # evaluation, early stopping, sampling, a family's own hooks, callers' hooks
    PERSIST = 1  # the checkpoint hook
    REPORT = 2  # logging


class Hook:
    """The events the loop emits; a hook overrides the ones it needs and the loop knows none by name.

    A hook that keeps state across a resume (best loss, patience counter) names it with ``state_key``.
    """

    state_key: str | None = None
    phase: HookPhase = HookPhase.OBSERVE

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


def in_phase_order(hooks: Sequence[Hook]) -> list[Hook]:
    """The hooks as the loop calls them: by phase, and in the given order within one."""
    return sorted(hooks, key=lambda hook: hook.phase)


@dataclass
class LoopState:
    """Counters that survive a resume; ``step`` counts completed optimizer steps."""

    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        return cls(step=int(data["step"]), tokens_seen=int(data["tokens_seen"]), elapsed_s=float(data["elapsed_s"]))


@dataclass(frozen=True)
class StepMetrics:
    loss: float
    lr: float
    grad_norm: float
    tokens_per_second: float
    step_time_s: float
    tokens: int = 0  # input tokens of the step, all ranks together


class TrainingContext:
    """What hooks see: the parts, the counters, the last step's metrics, and the event emitters."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        ema: EMA | None,
        state: LoopState,
        max_iters: int,
        hooks: Sequence[Hook],
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.ema = ema
        self.state = state
        self.max_iters = max_iters
        self.hooks = in_phase_order(hooks)
        self.last_step: StepMetrics | None = None
        self.last_eval: EvalResult | None = None
        self.stop_reason: str | None = None
        self.interrupted_by: str | None = None

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def emit_eval(self, result: EvalResult) -> None:
        self.last_eval = result
        for hook in self.hooks:
            hook.on_eval_end(self, result)

    def emit_checkpoint_saved(self, path: Path) -> None:
        for hook in self.hooks:
            hook.on_checkpoint_saved(self, path)

    def hook_states(self) -> dict[str, Any]:
        return {hook.state_key: hook.state_dict() for hook in self.hooks if hook.state_key}

    def load_hook_states(self, states: dict[str, Any]) -> None:
        for hook in self.hooks:
            if hook.state_key and hook.state_key in states:
                hook.load_state_dict(states[hook.state_key])
