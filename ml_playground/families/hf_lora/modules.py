"""Small wrappers that give a ``transformers`` model the interface our loop and evaluation use."""

from __future__ import annotations

import torch
from torch import nn


class LogitsOnly(nn.Module):
    """``forward(input_ids) -> logits``: the interface our loop and evaluation use."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.lm(input_ids=idx, use_cache=False).logits
        return logits
