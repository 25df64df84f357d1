"""Which library multiplies the linear layers on the CPU: PyTorch's default (MKL) or oneDNN.

PyTorch sends a float32 ``F.linear`` on x86 CPUs to MKL, which on AMD processors does not take its
AVX-512 code path. oneDNN, which PyTorch also ships (``torch.ops.mkldnn``, the kernels Inductor uses for
frozen CPU models), does. Measured on the 2-core AMD EPYC of our benchmarks (``make bench``):
a 256x384 @ 384x1152 product runs at 530 against 230 GFLOP/s, one decoding step of a 6-layer 384-wide
model spends 1.1 instead of 2.3 ms in its 24 matrix-vector products, a training step of the 4-layer
128-wide model takes 0.79 of the time. Both are IEEE float32 (oneDNN's default math mode); sums are
ordered differently, so results agree to float rounding, not bit for bit.

``kernel = "onednn"`` runs the forward product and the input gradient on oneDNN, and the weight gradient
too for layers 256 or more wide (narrower ones stay on ``torch.mm``, as fast there without two transposed
copies). It applies to CPU float32 tensors only: under autocast or on an accelerator, a layer falls back
to ``F.linear``. Under ``torch.compile`` the product is the custom operator
``ml_playground::onednn_linear``, which Dynamo keeps as one opaque call (it cannot trace the private op
itself, and Inductor would otherwise pick MKL), while Inductor fuses everything around it.

Which kernel is faster depends on the CPU and the shapes, so each family measures its own at start-up with
the helpers at the end (``time_products``, ``cached_kernel``, ``pick_kernel``): GPT's block products
(``families/gpt/kernel_choice.py``) and a LoRA run's frozen products (``families/hf_lora/frozen_products.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F

from ml_playground.core.errors import ConfigError
from ml_playground.core.measured_choice import alternating_medians, cached_choice

LinearKernel = Literal["aten", "onednn"]
LinearKernelSetting = Literal["auto", "aten", "onednn"]
Work = TypeVar("Work")  # what a kernel choice is measured on (a model's shapes and rows)


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
            "this PyTorch build has no oneDNN linear operator; use auto or aten", key="train.model.linear_kernel"
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
    )


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")
    return out


# Weight gradients of layers at least this wide on both sides run on oneDNN too. Measured here (``make
# bench`` machine, 1024 tokens): 128-wide products are as fast or faster on ``torch.mm`` without the two
# transposed copies; from 256 wide oneDNN is 1.2-1.6x faster, whole training steps 3% (256) to 10% (384).
ONEDNN_WEIGHT_GRAD_MIN_WIDTH = 256


def _gradients(
    needs_input_grad: tuple[bool, ...],
    x: torch.Tensor,
    weight: torch.Tensor,
    grad: torch.Tensor,
    product: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of ``x @ weight.T + bias``; ``product`` is the oneDNN linear (eager or as the operator)."""
    flat_grad = grad.reshape(-1, grad.size(-1))
    grad_x = grad_weight = grad_bias = None
    if needs_input_grad[0]:
        # dL/dx = dL/dy @ W, a linear layer whose weight is W^T: oneDNN reads the transposed view as it is
        # (as fast as a contiguous copy, and no copy of the weight lives until the backward pass is done)
        grad_x = product(flat_grad, weight.t(), None).view(x.shape)
    if needs_input_grad[1]:
        flat_x = x.reshape(-1, x.size(-1))
        if min(weight.shape) >= ONEDNN_WEIGHT_GRAD_MIN_WIDTH:
            # dL/dW = dL/dy^T @ x, a linear layer on dL/dy^T whose weight is x^T (both copied contiguous)
            grad_weight = product(flat_grad.t().contiguous(), flat_x.t().contiguous(), None)
        else:
            grad_weight = torch.mm(flat_grad.t(), flat_x)
    if needs_input_grad[2]:
        grad_bias = flat_grad.sum(0)
    return grad_x, grad_weight, grad_bias


class _OneDnnLinear(torch.autograd.Function):
    """Eager training (a third less overhead per call than the operator below)."""

    # forward(ctx, ...) rather than setup_context: apply() then skips binding the signature per call.
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        return _gradients(ctx.needs_input_grad, x, weight, grad_outputs[0], _onednn)


@torch.library.custom_op("ml_playground::onednn_linear", mutates_args=())
def _onednn_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's linear as an operator of its own, for graphs that ``torch.compile`` captures."""
    return _onednn(x, weight, bias)


@_onednn_op.register_fake
def _onednn_op_shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _onednn_op_save(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight)


def _onednn_op_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, weight = ctx.saved_tensors
    return _gradients(ctx.needs_input_grad, x, weight, grad, _onednn_op)


_onednn_op.register_autograd(_onednn_op_backward, setup_context=_onednn_op_save)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel: LinearKernel) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, on oneDNN where ``kernel`` asks for it and it applies."""
    if kernel == "onednn" and onednn_applies(x, weight):
        if torch.compiler.is_compiling():
            compiled: torch.Tensor = _onednn_op(x, weight, bias)
            return compiled
        if not torch.is_grad_enabled():  # generation and evaluation: no graph to record
            return _onednn(x, weight, bias)
        out: torch.Tensor = _OneDnnLinear.apply(x, weight, bias)
        return out
    return F.linear(x, weight, bias)


# Choosing between the two kernels by measurement, for the families' own shapes

Product = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, LinearKernel], torch.Tensor]
MARGIN = 1.15  # oneDNN is chosen only this much faster: a near tie stays on the default, not flipping between runs


def time_products(
    shapes: Sequence[tuple[int, int]],
    rows: int,
    *,
    weight_grads: bool,
    input_grads: bool,
    repeats: int,
    product: Product = linear,
) -> dict[LinearKernel, float]:
    """Median seconds of one product per weight shape (out, in) at ``rows`` rows on each kernel, timed in turns,
    with the backward pass where a gradient is asked for (a frozen weight: its input's only)."""
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(out, inp, generator=generator, requires_grad=weight_grads) for out, inp in shapes]
    inputs = [torch.randn(rows, inp, generator=generator, requires_grad=input_grads) for _, inp in shapes]
    # A dense upstream gradient, as a real backward pass has: ``out.sum().backward()`` would pass a
    # stride-0 expanded tensor, which MKL's product handles on a slow path and oneDNN's copy hides.
    upstream = [torch.randn(rows, out, generator=generator) for out, _ in shapes]
    backward = weight_grads or input_grads

    def run(kernel: LinearKernel) -> None:
        with torch.set_grad_enabled(backward):
            for x, weight, grad in zip(inputs, weights, upstream, strict=True):
                out = product(x, weight, None, kernel)
                if backward:
                    out.backward(grad)  # type: ignore[no-untyped-call]

    seconds = alternating_medians({"aten": lambda: run("aten"), "onednn": lambda: run("onednn")}, repeats)
    return {"aten": seconds["aten"], "onednn": seconds["onednn"]}


def cached_kernel(
    file: str,
    key: str,
    measure: Callable[[], Mapping[LinearKernel, float]],
    cache_dir: Path | None = None,
) -> LinearKernel:
    """oneDNN where ``measure()`` (seconds of ``aten`` and ``onednn``) finds it ``MARGIN`` faster, else the
    default: from ``file`` in the cache, or measured now and cached."""

    def decide(seconds: Mapping[str, float]) -> str:
        return "onednn" if seconds["aten"] >= MARGIN * seconds["onednn"] else "aten"

    def timed() -> Mapping[str, float]:
        seconds = measure()
        return {"aten": seconds["aten"], "onednn": seconds["onednn"]}

    return "onednn" if cached_choice(file, key, ("aten", "onednn"), timed, decide, cache_dir) == "onednn" else "aten"


def pick_kernel(
    setting: LinearKernelSetting,
    device: torch.device,
    work: Work,
    chooser: Callable[[Work], LinearKernel],
    *,
    available: bool | None = None,
) -> LinearKernel:
    """The kernel for ``setting``: ``auto`` asks ``chooser`` about ``work`` where oneDNN is a choice at all."""
    resolved = resolve_linear_kernel(setting, device, available=available)
    return chooser(work) if setting == "auto" and resolved == "onednn" else resolved
