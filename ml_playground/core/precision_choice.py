"""``train.dtype = "auto"`` on a CPU: bfloat16 autocast where this CPU multiplies in it clearly faster.

Whether bfloat16 pays on a CPU is a property of the chip, not of the code: an Intel Xeon with AMX
multiplies bfloat16 tiles in hardware (a LoRA step on SmolLM2-135M at 4 x 512 tokens ran 2.2x faster
here, 2.0x at 4 x 448 with chat masks), AVX-512 BF16
(AMD Zen 4) has dot-product instructions, and a CPU without either converts every element and runs
slower than float32. So ``auto`` times a training-shaped product (a frozen weight, the gradient flowing
back to the input, as in a LoRA step or a transformer block's backward pass) both ways, once per CPU,
PyTorch version and thread count, and keeps the answer in ``<cache>/cpu_precision_v1.json``.
bfloat16 must be ``MARGIN`` faster: it costs precision, so it has to buy clearly more steps.
Weights, optimizer state and the loss stay float32 either way; autocast runs the products."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from ml_playground.core.measured_choice import alternating_medians, cached_choice, machine_key

MARGIN = 1.3
CACHE_FILE = "cpu_precision_v1.json"
WIDTH = 1024
ROWS = 2048


def measure(repeats: int = 5, width: int = WIDTH, rows: int = ROWS) -> dict[str, float]:
    """Median seconds of ``x @ W.T`` and its gradient to ``x``, in float32 and under bfloat16 autocast."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4 * width, width, generator=generator)  # frozen: no gradient of its own
    x = torch.randn(rows, width, generator=generator, requires_grad=True)
    upstream = torch.randn(rows, 4 * width, generator=generator)

    def step(dtype: torch.dtype) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                out = torch.nn.functional.linear(x, weight)
            out.backward(upstream.to(out.dtype))  # type: ignore[no-untyped-call]
            x.grad = None

        return run

    return alternating_medians({"float32": step(torch.float32), "bfloat16": step(torch.bfloat16)}, repeats)


def decide(seconds: Mapping[str, float]) -> str:
    return "bfloat16" if seconds["float32"] >= MARGIN * seconds["bfloat16"] else "float32"


def cpu_autocast_dtype(
    cache_dir: Path | None = None, measure_fn: Callable[[], Mapping[str, float]] = measure
) -> torch.dtype:
    """bfloat16 or float32 for training on this CPU: cached, or measured now (about a second)."""
    chosen = cached_choice(CACHE_FILE, machine_key(), ("bfloat16", "float32"), measure_fn, decide, cache_dir)
    return torch.bfloat16 if chosen == "bfloat16" else torch.float32
