"""What the tests of decoding products share: seeded weights, and ``F.linear`` that counts its calls."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weights(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=generator) for shape in shapes]


class Recording:
    """``F.linear``, counting its calls: what took the plain path."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        self.calls += 1
        return F.linear(x, weight, bias)
