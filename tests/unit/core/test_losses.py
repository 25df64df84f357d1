"""The loss through a frozen head in chunks of rows: the same loss and gradients as full logits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ml_playground.core.linear_kernels import onednn_available
from ml_playground.core.losses import IGNORE_INDEX, ROW_STEP, chunked_head_cross_entropy, head_cross_entropy

pytestmark = pytest.mark.unit


def _case(bias: bool) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    head = nn.Linear(32, 3000, bias=bias).requires_grad_(False)
    hidden = torch.randn(3, 50, 32, requires_grad=True)
    targets = torch.randint(0, 3000, (3, 50))
    targets[:, :20] = IGNORE_INDEX
    return head, hidden, targets


def _loss_and_grad(loss: torch.Tensor, hidden: torch.Tensor) -> tuple[float, torch.Tensor]:
    (grad,) = torch.autograd.grad(loss, hidden)
    return float(loss.detach()), grad


@pytest.mark.parametrize("bias", [False, True])
def test_chunks_give_the_full_logits_loss_and_gradient(bias: bool) -> None:
    head, hidden, targets = _case(bias)
    seven_rows = 4 * 3000 * 7  # many chunks, and a short last one
    chunked, chunked_grad = _loss_and_grad(chunked_head_cross_entropy(hidden, head, targets, seven_rows), hidden)
    full, full_grad = _loss_and_grad(head_cross_entropy(hidden, head, targets), hidden)
    assert chunked == pytest.approx(full, rel=1e-6)
    assert torch.allclose(chunked_grad, full_grad, atol=1e-8)
    assert not chunked_grad[:, :19].any()  # positions without a target get no gradient


def test_under_bfloat16_autocast_it_stays_within_bfloat16_rounding() -> None:
    head, hidden, targets = _case(bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = chunked_head_cross_entropy(hidden, head, targets)
        full = head_cross_entropy(hidden, head, targets)
    (chunked_grad,) = torch.autograd.grad(chunked, hidden)
    (full_grad,) = torch.autograd.grad(full, hidden)
    assert float(chunked.detach()) == pytest.approx(float(full.detach()), rel=1e-3)
    assert torch.allclose(chunked_grad, full_grad, atol=2e-2 * float(full_grad.abs().max()))


def test_no_target_is_nan_as_cross_entropy_and_a_trainable_head_is_refused() -> None:
    head, hidden, targets = _case(bias=False)
    assert math.isnan(float(chunked_head_cross_entropy(hidden, head, torch.full_like(targets, IGNORE_INDEX)).detach()))
    with pytest.raises(ValueError, match="frozen head"):
        chunked_head_cross_entropy(hidden, nn.Linear(32, 3000), targets)


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
@pytest.mark.parametrize("kept", [1, ROW_STEP - 1, ROW_STEP, 2 * ROW_STEP + 5])
def test_on_onednn_padded_chunks_give_the_same_loss_and_gradient(kept: int) -> None:
    head, _, _ = _case(bias=True)
    hidden = torch.randn(1, 3 * ROW_STEP, 32, requires_grad=True)
    targets = torch.randint(0, 3000, (1, 3 * ROW_STEP))
    targets[:, kept:] = IGNORE_INDEX
    chunk = 4 * 3000 * (ROW_STEP + 7)  # rounded down to one row step a chunk on oneDNN
    want, want_grad = _loss_and_grad(chunked_head_cross_entropy(hidden, head, targets, chunk), hidden)
    got, got_grad = _loss_and_grad(chunked_head_cross_entropy(hidden, head, targets, chunk, kernel="onednn"), hidden)
    assert got == pytest.approx(want, rel=1e-5)
    assert torch.allclose(got_grad, want_grad, atol=1e-7)
    assert not got_grad[:, kept:].any()
