"""A LoRA run's frozen products (the base model's projections and its output head) on the faster CPU kernel.

LoRA trains a few small matrices beside each projection; the projections themselves stay frozen, and a
training step spends most of its time multiplying by them: forward, and again for the gradient to their
input (a frozen weight needs no gradient of its own). PyTorch sends a float32 product on x86 to MKL,
which takes no AVX-512 path on AMD processors; oneDNN (``core/linear_kernels.py``) does. Which is
faster depends on the CPU, so ``train.model.linear_kernel = "auto"`` times both on the model's own
frozen shapes at the run's rows (batch x block), forward and input gradient, once per machine, and keeps
the answer in ``<cache>/frozen_products_v1.json``. oneDNN must be ``core/linear_kernels.py:MARGIN`` faster
to be chosen.

Only float32 products change: under bfloat16 autocast a routed layer is ``F.linear`` as before, and a run
whose precision is not float32 does not measure at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ml_playground.core.linear_kernels import (
    LinearKernel,
    LinearKernelSetting,
    cached_kernel,
    linear,
    pick_kernel,
    time_products,
)
from ml_playground.core.measured_choice import machine_key

MAX_ROWS = 1024  # more rows change nothing in which kernel wins, only how long the measurement takes
CACHE_FILE = "frozen_products_v1.json"

Shape = tuple[int, int]  # (out_features, in_features), as nn.Linear's weight


@dataclass(frozen=True)
class FrozenWorkload:
    shapes: tuple[Shape, ...]  # the distinct shapes of the frozen projections, sorted
    rows: int  # tokens per product: batch x block

    def key(self) -> str:
        listed = ", ".join(f"{out}x{inp}" for out, inp in self.shapes)
        return machine_key(f"frozen {listed} x {min(self.rows, MAX_ROWS)} rows")


def frozen_linears(model: nn.Module) -> list[nn.Linear]:
    """The model's ``nn.Linear`` layers whose parameters are all frozen (LoRA's base projections)."""
    return [
        module
        for module in model.modules()
        if isinstance(module, nn.Linear) and not any(p.requires_grad for p in module.parameters())
    ]


def workload(linears: Sequence[nn.Linear], rows: int) -> FrozenWorkload:
    return FrozenWorkload(tuple(sorted({(m.out_features, m.in_features) for m in linears})), rows)


class RoutedLinear(nn.Linear):
    """A frozen ``nn.Linear`` whose product runs on ``kernel``; it reads its weight at each call (a merge or a
    load shows). Layers become one by a change of class (``route``): the same object, the same parameters,
    the same state dict names.

    The kernel belongs to the class, not to each layer: a compiled decoder layer (``compiled_layers.py``)
    is traced once and reused for every layer, and ``torch.compile`` guards on a per-layer forward object by
    its identity. With one such object a projection (the first way this was written), every layer compiled
    again, and past the compile limit (8) the rest of the 30 layers of SmolLM2-135M ran eager."""

    kernel: LinearKernel = "onednn"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias, self.kernel)


def route(linears: Sequence[nn.Linear], kernel: LinearKernel) -> int:
    """Run each of ``linears`` on ``kernel`` (nothing changes for ``aten``); how many layers run on it. Only a
    plain ``nn.Linear`` changes: a subclass keeps its own forward (a quantized layer, say)."""
    if kernel == "aten":
        return 0
    plain = [layer for layer in linears if type(layer) in (nn.Linear, RoutedLinear)]
    for layer in plain:
        layer.__class__ = RoutedLinear
    return len(plain)


def measure(work: FrozenWorkload, repeats: int = 5) -> dict[LinearKernel, float]:
    """Median seconds of one product per shape, forward and gradient to the input, on each kernel."""
    rows = min(work.rows, MAX_ROWS)
    return time_products(work.shapes, rows, weight_grads=False, input_grads=True, repeats=repeats)


def choose(
    work: FrozenWorkload,
    *,
    cache_dir: Path | None = None,
    measure_fn: Callable[[FrozenWorkload], Mapping[LinearKernel, float]] = measure,
) -> LinearKernel:
    """The faster kernel for ``work`` here, from the cache or measured now (and then cached)."""
    return cached_kernel(CACHE_FILE, work.key(), lambda: measure_fn(work), cache_dir)


def pick(
    setting: LinearKernelSetting,
    device: torch.device,
    dtype: torch.dtype,
    work: FrozenWorkload,
    *,
    available: bool | None = None,
    chooser: Callable[[FrozenWorkload], LinearKernel] = choose,
) -> LinearKernel:
    """``train.model.linear_kernel`` for a LoRA run: ``auto`` measures where oneDNN could change a product
    (a CPU whose PyTorch has it, a float32 run); elsewhere the default."""
    return pick_kernel(setting, device, work, chooser if dtype == torch.float32 else _default, available=available)


def _default(work: FrozenWorkload) -> LinearKernel:
    return "aten"
