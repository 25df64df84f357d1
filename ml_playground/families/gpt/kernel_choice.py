"""``linear_kernel = "auto"``: oneDNN or PyTorch's default, measured on this machine for this model's shapes.

Which library multiplies faster depends on the CPU and on the shape: on the AMD EPYC of earlier
benchmarks oneDNN trained 1.3x faster; on this Intel Xeon MKL trains the 128-wide model's block products
1.18x faster (whole training steps 1.1x) and decodes one token 1.8x faster (its matrix-vector path).
So ``auto`` times both on the three products of a transformer block (``C -> 3C``, ``C -> 4C``,
``4C -> C``) at the rows the model will run (batch x block for training, forward and backward with a
dense upstream gradient; one row for decoding, forward only), once per machine, and keeps the
answer in ``<cache>/linear_kernels_v2.json`` keyed by CPU, PyTorch, threads and shape (``v2``: the
first file holds choices measured with a stride-0 gradient, which misled them). oneDNN must be
``MARGIN`` faster to be chosen, so a near tie stays on the default instead of flipping between runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ml_playground.core.linear_kernels import (
    LinearKernel,
    LinearKernelSetting,
    cached_kernel,
    linear,
    resolve_linear_kernel,
    time_kernels,
)
from ml_playground.core.measured_choice import machine_key

MARGIN = 1.15
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


Product = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, LinearKernel], torch.Tensor]


def measure(workload: Workload, repeats: int = 7, product: Product = linear) -> dict[LinearKernel, float]:
    """Median seconds of the block's three products (with their gradients when training) on each kernel."""
    width, rows = workload.width, min(workload.rows, MAX_ROWS)
    generator = torch.Generator().manual_seed(0)
    shapes = ((width, 3 * width), (width, 4 * width), (4 * width, width))
    weights = [torch.randn(out, inp, generator=generator, requires_grad=workload.training) for inp, out in shapes]
    inputs = [torch.randn(rows, inp, generator=generator, requires_grad=workload.training) for inp, _ in shapes]
    # A dense upstream gradient, as a real backward pass has: ``out.sum().backward()`` would pass a
    # stride-0 expanded tensor, which MKL's product handles on a slow path and oneDNN's copy hides.
    upstream = [torch.randn(rows, out, generator=generator) for _, out in shapes]

    def run(kernel: LinearKernel) -> None:
        with torch.set_grad_enabled(workload.training):
            for x, weight, grad in zip(inputs, weights, upstream, strict=True):
                out = product(x, weight, None, kernel)
                if workload.training:
                    out.backward(grad)  # type: ignore[no-untyped-call]

    return time_kernels(run, repeats)


def choose_kernel(
    workload: Workload,
    *,
    cache_dir: Path | None = None,
    measure_fn: Callable[[Workload], dict[LinearKernel, float]] = measure,
) -> LinearKernel:
    """The faster kernel for ``workload`` here, from the cache or measured now (and then cached)."""
    return cached_kernel(CACHE_FILE, workload.key(), lambda: measure_fn(workload), MARGIN, cache_dir)


def pick_linear_kernel(
    setting: LinearKernelSetting,
    device: torch.device,
    workload: Workload,
    *,
    available: bool | None = None,
    chooser: Callable[[Workload], LinearKernel] = choose_kernel,
) -> LinearKernel:
    """``train.model.linear_kernel`` for ``workload``: ``auto`` measures where oneDNN is a choice at all."""
    resolved = resolve_linear_kernel(setting, device, available=available)
    return chooser(workload) if setting == "auto" and resolved == "onednn" else resolved
