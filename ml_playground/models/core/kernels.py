"""Which library multiplies the linear layers on the CPU: PyTorch's default (MKL) or oneDNN.

PyTorch sends a float32 ``F.linear`` on x86 CPUs to MKL, which on AMD processors does not take its
AVX-512 code path. oneDNN, which PyTorch also ships (``torch.ops.mkldnn``, the kernels Inductor uses for
frozen CPU models), does. Measured on the 2-core AMD EPYC of our benchmarks (``make bench``):
a 256x384 @ 384x1152 product runs at 530 against 230 GFLOP/s, one decoding step of a 6-layer 384-wide
model spends 1.1 instead of 2.3 ms in its 24 matrix-vector products, a training step of the 4-layer
128-wide model takes 0.79 of the time. Both are IEEE float32 (oneDNN's default math mode); sums are
ordered differently, so results agree to float rounding, not bit for bit.

``kernel = "onednn"`` runs the forward product and the input gradient on oneDNN and the weight gradient
on ``torch.mm`` (as fast here and saves two transposed copies). It applies to CPU float32 tensors only:
under autocast, ``torch.compile`` (Inductor picks its own kernels) or on an accelerator, a layer falls
back to ``F.linear``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ml_playground.core.errors import ConfigError

LinearKernel = Literal["aten", "onednn"]
LinearKernelSetting = Literal["auto", "aten", "onednn"]


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's linear operator and it computes ``F.linear`` (a private op)."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    x, weight = torch.arange(6.0).view(2, 3), torch.arange(12.0).view(4, 3)
    try:
        return bool(torch.equal(_onednn(x, weight, None), F.linear(x, weight)))
    except (AttributeError, RuntimeError, TypeError):  # renamed, removed, or a new signature
        return False


def resolve_linear_kernel(
    setting: LinearKernelSetting, device: torch.device, *, available: bool | None = None
) -> LinearKernel:
    """``auto`` means oneDNN on a CPU whose PyTorch has it, the default elsewhere."""
    has_onednn = onednn_available() if available is None else available
    if setting == "aten":
        return "aten"
    if setting == "onednn" and not has_onednn:
        raise ConfigError(
            "this PyTorch build has no oneDNN linear operator; use auto or aten", key="train.linear_kernel"
        )
    if setting == "onednn":
        return "onednn"
    return "onednn" if device.type == "cpu" and has_onednn else "aten"


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")
    return out


class _OneDnnLinear(torch.autograd.Function):
    # forward(ctx, ...) rather than setup_context: apply() then skips binding the signature per call.
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad,) = grad_outputs
        x, weight = ctx.saved_tensors
        flat_grad = grad.reshape(-1, grad.size(-1))
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # dL/dx = dL/dy @ W, a linear layer whose weight is W^T.
            grad_x = _onednn(flat_grad, weight.t().contiguous(), None).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.mm(flat_grad.t(), x.reshape(-1, x.size(-1)))
        if ctx.needs_input_grad[2]:
            grad_bias = flat_grad.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel: LinearKernel) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, on oneDNN where ``kernel`` asks for it and it applies."""
    if kernel == "onednn" and onednn_applies(x, weight):
        if not torch.is_grad_enabled():  # generation and evaluation: no graph to record
            return _onednn(x, weight, bias)
        out: torch.Tensor = _OneDnnLinear.apply(x, weight, bias)
        return out
    return F.linear(x, weight, bias)
