"""Rotary position embeddings: the tables both families' decode steps rotate queries and keys with.

A head's two halves (x1, x2) are rotated by each position's angles as ``x * (cos, cos) + (x2, x1) * (-sin,
sin)``: the ``rotate_half`` form Hugging Face's Llama uses, and our GPT's (``families/gpt/model.py``).
"""

from __future__ import annotations

import torch


def inverse_frequencies(head_dim: int, base: float, device: torch.device) -> torch.Tensor:
    """The rotation speed of each pair of a head's dimensions, (head_dim / 2,)."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))


def rotary_from_angles(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, cos) and (-sin, sin) of rotation angles (..., D/2), each (..., D)."""
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)
