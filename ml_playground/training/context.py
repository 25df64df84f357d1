"""What the loop and its hooks share: the counters that survive a resume and the context hooks see."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

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


class Hook(Protocol):
    """What the context calls on its hooks (``hooks/base.py`` has the base class that implements it)."""

    state_key: str | None

    def on_eval_end(self, ctx: TrainingContext, result: EvalResult) -> None: ...

    def on_checkpoint_saved(self, ctx: TrainingContext, path: Path) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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
        self.hooks = hooks
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
