"""Exponential moving average of the weights, kept on the model's device and updated in place."""

from __future__ import annotations

import torch
from torch import nn

from ml_playground.core.lazy_types import is_dtensor


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` after each step from ``start_step`` on.

    Before ``start_step`` the shadow simply follows the weights. The update is one fused
    ``_foreach_lerp_`` over all tensors: no per-step copies.
    """

    def __init__(self, model: nn.Module, decay: float, start_step: int = 0) -> None:
        self.decay = decay
        self.start_step = start_step
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self._params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        current = [p.detach() for p in self._params]
        if step < self.start_step:
            torch._foreach_copy_(self.shadow, current)  # pyright: ignore[reportPrivateImportUsage]
        else:
            torch._foreach_lerp_(self.shadow, current, 1.0 - self.decay)  # pyright: ignore[reportPrivateImportUsage]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights whole; under FSDP every rank must call this (the shards are gathered)."""
        return {name: _whole(tensor) for name, tensor in zip(self._names, self.shadow, strict=True)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self._names) ^ set(state)
        if missing:
            raise KeyError(f"EMA state does not match the model: {sorted(missing)}")
        with torch.no_grad():
            for name, tensor in zip(self._names, self.shadow, strict=True):
                tensor.copy_(_like(state[name], tensor))

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's weights and the averaged ones (call twice to restore)."""
        for param, shadow in zip(self._params, self.shadow, strict=True):
            tmp = param.detach().clone()
            param.copy_(shadow)
            shadow.copy_(tmp)


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if is_dtensor(tensor) else tensor  # type: ignore[attr-defined]


def _like(whole: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``whole`` laid out as ``target``: this rank's shard when ``target`` is a sharded DTensor."""
    if is_dtensor(target):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(whole.to(target.dtype), target.device_mesh, target.placements)  # type: ignore[attr-defined]
    return whole
