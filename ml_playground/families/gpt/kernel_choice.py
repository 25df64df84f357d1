"""``linear_kernel = "auto"``: oneDNN or PyTorch's default, measured on this machine for this model's shapes.

Which library multiplies faster depends on the CPU and on the shape: on the AMD EPYC of earlier
benchmarks oneDNN trained 1.3x faster; on this Intel Xeon MKL trains the 128-wide model's block products
1.18x faster (whole training steps 1.1x) and decodes one token 1.8x faster (its matrix-vector path).
So ``auto`` times both on the three products of a transformer block (``C -> 3C``, ``C -> 4C``,
``4C -> C``) at the rows the model will run (batch x block for training, forward and backward with a
dense upstream gradient; one row for decoding, forward only), once per machine, and keeps the
answer in ``<cache>/linear_kernels_v2.json`` keyed by CPU, PyTorch, threads and shape (``v2``: the
first file holds choices measured with a stride-0 gradient, which misled them). oneDNN must be
``core/linear_kernels.py:MARGIN`` faster to be chosen, so a near tie stays on the default instead of
flipping between runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ml_playground.core.linear_kernels import (
    LinearKernel,
    LinearKernelSetting,
    Product,
    cached_kernel,
    linear,
    pick_kernel,
    time_products,
)
from ml_playground.core.measured_choice import machine_key

MAX_ROWS = 4096  # more rows change nothing in which kernel wins, only how long the measurement takes
CACHE_FILE = "linear_kernels_v2.json"


@dataclass(frozen=True)
class Workload:
    width: int  # n_embd
    rows: int  # tokens per product: batch x block when training, 1 when decoding
    training: bool

    def key(self) -> str:
        mode = "train" if self.training else "decode"
        return machine_key(f"{self.width} x {self.rows} {mode}")


def measure(workload: Workload, repeats: int = 7, product: Product = linear) -> dict[LinearKernel, float]:
    """Median seconds of the block's three products (with their gradients when training) on each kernel."""
    width, training = workload.width, workload.training
    shapes = ((3 * width, width), (4 * width, width), (width, 4 * width))
    rows = min(workload.rows, MAX_ROWS)
    return time_products(shapes, rows, weight_grads=training, input_grads=training, repeats=repeats, product=product)


def choose_kernel(
    workload: Workload,
    *,
    cache_dir: Path | None = None,
    measure_fn: Callable[[Workload], dict[LinearKernel, float]] = measure,
) -> LinearKernel:
    """The faster kernel for ``workload`` here, from the cache or measured now (and then cached)."""
    return cached_kernel(CACHE_FILE, workload.key(), lambda: measure_fn(workload), cache_dir)


def pick_linear_kernel(
    setting: LinearKernelSetting,
    device: torch.device,
    workload: Workload,
    *,
    available: bool | None = None,
    chooser: Callable[[Workload], LinearKernel] = choose_kernel,
) -> LinearKernel:
    """``train.model.linear_kernel`` for ``workload``: ``auto`` measures where oneDNN is a choice at all."""
    return pick_kernel(setting, device, workload, chooser, available=available)
