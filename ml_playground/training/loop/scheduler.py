"""Learning-rate schedule: linear warm-up, then cosine, linear or constant decay to ``min_lr``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LrSchedule:
    max_lr: float
    min_lr: float
    warmup_iters: int
    decay_iters: int
    decay: Literal["cosine", "linear", "constant"] = "cosine"

    def __call__(self, step: int) -> float:
        """Learning rate for 1-based optimizer step ``step``."""
        if step <= self.warmup_iters:
            return self.max_lr * step / max(1, self.warmup_iters)
        if self.decay == "constant" or step >= self.decay_iters:
            return self.max_lr if self.decay == "constant" else self.min_lr
        progress = (step - self.warmup_iters) / max(1, self.decay_iters - self.warmup_iters)
        if self.decay == "linear":
            return self.max_lr + (self.min_lr - self.max_lr) * progress
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.max_lr - self.min_lr)
