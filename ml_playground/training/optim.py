"""Optimizers: AdamW for every parameter, or Muon for the hidden matrices with AdamW for the rest.

Muon (Jordan et al., 2024; ``torch.optim.Muon``) orthogonalises the momentum of each weight matrix
with a few Newton-Schulz iterations. It is meant for the matrices inside the transformer blocks;
embeddings, the output head, norms and biases stay on AdamW, as in modded-nanogpt. On the
char-level Shakespeare speedrun it reaches the target loss in about half the steps of AdamW.

``GroupedMuon`` is ``torch.optim.Muon`` (its constructor, defaults and state) with a step that
orthogonalises all matrices of one shape in one batched Newton-Schulz iteration instead of one matrix
at a time: a 4-layer model has four shapes and sixteen matrices, and on 2 CPU cores the per-matrix loop
took 16 of a 64 ms training step (measured with the profiler; batched, the step's optimizer share is
about 6 ms). Same arithmetic as ``torch.optim.Muon``, in bfloat16 as it does or in float32 where this CPU was
measured faster in it (``newton_schulz.py``); sums may round differently.

Both run as one ``torch.optim.Optimizer``: the loop, gradient clipping, the grad scaler and the
checkpoint see one object. Each parameter group carries ``lr_ratio``, its learning rate relative
to ``train.optim.learning_rate``, so the one schedule drives both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ml_playground.configuration.models import OptimConfig
from ml_playground.training.newton_schulz import newton_schulz_dtype, orthogonalise


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


def evaluate_closure(closure: Callable[[], float] | None) -> float | None:
    """The loss of ``Optimizer.step``'s optional closure, computed with gradients on."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class GroupedMuon(torch.optim.Muon):
    """``torch.optim.Muon`` whose step orthogonalises same-shape matrices together (module docstring), in
    ``newton_schulz_dtype`` (bfloat16, as ``torch.optim.Muon``, unless given)."""

    def __init__(
        self, params: Any, *args: Any, newton_schulz_dtype: torch.dtype = torch.bfloat16, **kwargs: Any
    ) -> None:
        super().__init__(params, *args, **kwargs)
        self.newton_schulz_dtype = newton_schulz_dtype

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            buffers = []
            for param, grad in zip(params, grads, strict=True):
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buffers.append(state["momentum_buffer"])
            momentum = group["momentum"]
            torch._foreach_lerp_(buffers, grads, 1 - momentum)  # pyright: ignore[reportPrivateImportUsage]
            updates = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers  # pyright: ignore[reportPrivateImportUsage]
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])  # pyright: ignore[reportPrivateImportUsage]
            by_shape: dict[torch.Size, list[int]] = {}
            for i, param in enumerate(params):
                by_shape.setdefault(param.shape, []).append(i)
            for shape, members in by_shape.items():
                stacked = torch.stack([updates[i] for i in members])
                orthogonal = orthogonalise(
                    stacked, group["ns_coefficients"], group["ns_steps"], group["eps"], self.newton_schulz_dtype
                )
                rate = adjusted_lr(group["lr"], group["adjust_lr_fn"], shape)
                torch._foreach_add_([params[i] for i in members], list(orthogonal.unbind(0)), alpha=-rate)  # pyright: ignore[reportPrivateImportUsage]
        return loss


def adjusted_lr(lr: float, rule: str | None, shape: torch.Size) -> float:
    """Muon's learning rate for a matrix of ``shape`` under ``adjust_lr_fn`` (as ``torch.optim.Muon``)."""
    fan_out, fan_in = shape[:2]
    if rule is None or rule == "original":
        return lr * math.sqrt(max(1.0, fan_out / fan_in))
    if rule == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(fan_out, fan_in))
    return lr * math.sqrt(fan_out / fan_in)  # "spectral_unclamped", the last rule torch.optim.Muon accepts


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
        loss = evaluate_closure(closure)
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
    muon = GroupedMuon(
        [{"params": hidden, "lr_ratio": optim.muon_learning_rate / optim.learning_rate}],
        lr=optim.muon_learning_rate,
        momentum=optim.muon_momentum,
        weight_decay=optim.muon_weight_decay,
        adjust_lr_fn="original",  # scale by sqrt(max(1, fan_out / fan_in)), as Keller Jordan's Muon
        newton_schulz_dtype=newton_schulz_dtype(optim.muon_precision, [tuple(p.shape) for p in hidden], device),
    )
    rest = [(n, p) for n, p in named if not is_hidden_matrix(n, p)]
    return MuonWithAdamW(muon, torch.optim.AdamW(adamw_groups(rest, optim.weight_decay), **adamw_options))
