"""The training loss, shared by every family and by evaluation."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss, computed in float32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
