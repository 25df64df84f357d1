"""The training loss, shared by every family and by evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from ml_playground.core.linear_kernels import LinearKernel, linear

IGNORE_INDEX = -100  # targets with this id are not in the loss (PyTorch's cross_entropy default)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss, computed in float32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def head_cross_entropy(
    hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor
) -> torch.Tensor:
    """``cross_entropy(head(hidden), targets)``, with the output head applied only where there is a target.

    Masked data (chat answers, conditioned speeches, a batch's padding) leaves most positions without a
    target; their logits (batch x block x vocabulary floats, and as many in the backward pass) are never
    computed. All targets present: the head runs on every position, as ``cross_entropy`` does."""
    keep = targets != IGNORE_INDEX
    if bool(keep.all()):
        return cross_entropy(head(hidden), targets)
    return F.cross_entropy(head(hidden[keep]).float(), targets[keep])


CHUNK_BYTES = 64 * 2**20  # float32 logits per chunk of rows in ``chunked_head_cross_entropy``
ROW_STEP = 64  # on oneDNN, the head's products run on a multiple of this many rows


class _ChunkedHeadLoss(torch.autograd.Function):
    """Sum of the rows' next-token losses through a frozen output head, a few rows at a time.

    Each chunk's logits live only while its loss and its gradient to the hidden states are computed
    (in the forward pass: the softmax is at hand there); backward scales the stored gradient."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_bytes: int,
        kernel: LinearKernel,
    ) -> torch.Tensor:
        rows = max(1, chunk_bytes // (4 * weight.shape[0]))
        device = hidden.device.type
        compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        weight = weight.to(compute)  # once, not once per chunk and product as autocast would
        bias = None if bias is None else bias.to(compute)
        # the gradient's product is a linear layer whose weight is the head's transposed (a view: oneDNN reads it)
        transposed = weight.t() if kernel != "aten" and compute == torch.float32 else None
        padded = hidden
        if transposed is not None:
            # oneDNN keeps a primitive for every row count it meets, and the targets of a masked batch vary
            # from step to step: rows in multiples of ROW_STEP keep the count of shapes (and memory) bounded
            rows = max(ROW_STEP, rows - rows % ROW_STEP)
            padded = F.pad(hidden, (0, 0, 0, -hidden.shape[0] % ROW_STEP))
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden)
        with torch.autocast(device, enabled=False):
            for start in range(0, hidden.shape[0], rows):
                target = targets[start : start + rows]
                count = len(target)
                logits = linear(padded[start : start + rows].to(compute), weight, bias, kernel).float()
                total += F.cross_entropy(logits[:count], target, reduction="sum")
                probabilities = logits.softmax(dim=-1)
                probabilities[count:] = 0.0  # padding rows, if any: no gradient
                probabilities[torch.arange(count, device=target.device), target] -= 1.0
                scores = probabilities.to(compute)
                product = scores @ weight if transposed is None else linear(scores, transposed, None, kernel)
                grad[start : start + count] = product[:count].to(grad.dtype)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_outputs[0].to(grad.dtype), None, None, None, None, None


def chunked_head_cross_entropy(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    targets: torch.Tensor,
    chunk_bytes: int = CHUNK_BYTES,
    kernel: LinearKernel = "aten",
) -> torch.Tensor:
    """``head_cross_entropy`` for a frozen ``nn.Linear`` head without the batch's whole logits in memory.

    The mean over the targets present, as ``cross_entropy``. Gradients reach ``hidden`` only: the head
    must be frozen (a LoRA base's), which is checked. For SmolLM2 at batch 4 x 256, the logits and
    their gradient are 2 x 201 MB of float32; the chunks (``chunk_bytes`` of logits each) are reused.
    ``kernel`` runs the head's two products (logits, and the gradient to ``hidden``) on that library
    (``core/linear_kernels.py``) where it applies (float32 on a CPU)."""
    if head.weight.requires_grad or (head.bias is not None and head.bias.requires_grad):
        raise ValueError("chunked_head_cross_entropy needs a frozen head")
    keep = targets != IGNORE_INDEX
    picked, wanted = hidden[keep], targets[keep]
    if wanted.numel() == 0:
        return hidden.sum() * float("nan")  # as cross_entropy: the mean over no targets
    total: torch.Tensor = _ChunkedHeadLoss.apply(picked, head.weight, head.bias, wanted, chunk_bytes, kernel)
    return total / wanted.numel()
