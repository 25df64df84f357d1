"""Small wrappers that give a ``transformers`` model the interface our loop and evaluation use."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ml_playground.core.linear_kernels import LinearKernel
from ml_playground.core.losses import IGNORE_INDEX, chunked_head_cross_entropy, cross_entropy, head_cross_entropy


class LogitsOnly(nn.Module):
    """``forward(input_ids) -> logits``: the interface our loop and evaluation use."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.lm(input_ids=idx, use_cache=False).logits
        return logits


def target_loss(
    base: nn.Module, model: LogitsOnly, kernel: LinearKernel = "aten"
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of ``model`` computed as decoder, then the output head only where there is a target
    (a frozen head in chunks of rows, never the batch's whole logits, its products on ``kernel``).

    ``base`` is the ``transformers`` causal LM inside ``model`` (with its LoRA layers). A model whose
    logits are more than its head applied to the decoder's last hidden state (a soft cap, a scale) would
    differ: a probe on a few tokens compares both ways once, and such a model keeps the full logits."""
    get_decoder = getattr(base, "get_decoder", None)
    get_head = getattr(base, "get_output_embeddings", None)
    full = _full_loss(model)
    if get_decoder is None or get_head is None:
        return full
    decoder, head = get_decoder(), get_head()
    if not isinstance(decoder, nn.Module) or not isinstance(head, nn.Module):
        return full
    frozen = isinstance(head, nn.Linear) and not any(p.requires_grad for p in head.parameters())

    def split(idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = decoder(input_ids=idx, use_cache=False).last_hidden_state
        if frozen:  # LoRA leaves the head alone: its logits are needed a few rows at a time only
            assert isinstance(head, nn.Linear)
            return chunked_head_cross_entropy(hidden, head, targets, kernel=kernel)
        return head_cross_entropy(hidden, head, targets)

    return split if _agrees(split, full, model) else full


def _full_loss(model: LogitsOnly) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def full(idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy(model(idx), targets)

    return full


def _agrees(
    split: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    full: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    model: LogitsOnly,
) -> bool:
    device = next(model.parameters()).device
    idx = torch.arange(1, 9, device=device).view(1, 8)
    targets = torch.arange(2, 10, device=device).view(1, 8)
    targets[:, :3] = IGNORE_INDEX
    was_training = model.training
    model.eval()
    with torch.no_grad():
        agree = torch.allclose(split(idx, targets), full(idx, targets), rtol=1e-4, atol=1e-5)
    model.train(was_training)
    return agree
