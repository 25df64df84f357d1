"""What the training side needs from a metrics sink; implementations in ``training/loggers.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class MetricsLogger(Protocol):
    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record scalar metrics (``train_loss``, ``val_loss``, ``lr``, ``tokens_per_second``, ...) at ``step``."""
        ...

    def log_text(self, step: int, tag: str, text: str) -> None:
        """Record a piece of text, such as a sample drawn during training."""
        ...

    def close(self) -> None: ...
