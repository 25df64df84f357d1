"""Muon's Newton-Schulz iteration, and the precision it runs in on this machine.

``torch.optim.Muon`` orthogonalises in bfloat16: on a GPU, and on a CPU with bfloat16 dot-product
instructions (AVX-512 BF16, AMX), that is the fast way. A CPU without them converts every element and
multiplies slower than in float32. Measured on a 2-core Intel Xeon (Ice Lake, AVX-512 without BF16 or
AMX; 2026-12-08), the speedrun's sixteen matrices (four shapes of a 4 x 128 model) took 44-50 ms a step
in bfloat16 against 14-22 in float32, half of a 108 ms training step. So ``train.optim.muon_precision =
"auto"`` times one matrix of each shape both ways, once per CPU, PyTorch, threads and shapes, and keeps
the answer (``muon_precision_v1.json``); bfloat16 must be ``MARGIN`` faster, as it is where its
instructions exist. float32 is the more precise of the two, so where it wins nothing is given up.
Sides over ``CLIP`` are timed at ``CLIP``: which precision wins is a matter of the CPU's instructions, and
GPT-2 small's four shapes in full took 10.6 s to time there, clipped about a second.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from ml_playground.configuration.models import MuonPrecision
from ml_playground.core.measured_choice import alternating_medians, cached_choice, machine_key

MARGIN = 1.1
CACHE_FILE = "muon_precision_v1.json"
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# torch.optim.Muon's defaults; the timing depends on the shapes and steps, not on the values
COEFFICIENTS = (3.4445, -4.775, 2.0315)
STEPS = 5
CLIP = 512


def orthogonalise(
    updates: torch.Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Newton-Schulz on a stack of same-shape matrices (N, rows, cols) in ``dtype`` (bfloat16: as
    ``torch.optim.Muon`` does for one): each matrix scaled to Frobenius norm 1, then ``steps`` quintic
    iterations."""
    a, b, c = coefficients
    tall = updates.size(-2) > updates.size(-1)
    x = updates.to(dtype)
    x = x.mT if tall else x
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        polynomial = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, polynomial, x, beta=a)
    return x.mT if tall else x


def measure(shapes: Iterable[tuple[int, int]], repeats: int = 3) -> dict[str, float]:
    """Median seconds of one matrix of each shape orthogonalised, in bfloat16 and in float32."""
    generator = torch.Generator().manual_seed(0)
    matrices = [torch.randn(1, *shape, generator=generator) for shape in shapes]

    def run(dtype: torch.dtype) -> Callable[[], None]:
        def one_round() -> None:
            for matrix in matrices:
                orthogonalise(matrix, COEFFICIENTS, STEPS, 1e-7, dtype)

        return one_round

    with torch.no_grad():
        return alternating_medians({name: run(dtype) for name, dtype in DTYPES.items()}, repeats)


def decide(seconds: Mapping[str, float]) -> str:
    return "bfloat16" if seconds["float32"] >= MARGIN * seconds["bfloat16"] else "float32"


def newton_schulz_dtype(
    setting: MuonPrecision,
    shapes: Iterable[tuple[int, ...]],
    device: torch.device,
    cache_dir: Path | None = None,
    measure_fn: Callable[[list[tuple[int, int]]], Mapping[str, float]] = measure,
) -> torch.dtype:
    """The dtype Muon orthogonalises in: ``setting`` itself, or for ``auto`` bfloat16 off the CPU and on a CPU
    the faster of the two for these matrix shapes, clipped to ``CLIP`` (cached, or measured now)."""
    if setting != "auto":
        return DTYPES[setting]
    distinct = sorted({(min(shape[0], CLIP), min(shape[1], CLIP)) for shape in shapes if len(shape) == 2})
    if device.type != "cpu" or not distinct:
        return torch.bfloat16
    key = machine_key(",".join(f"{rows}x{cols}" for rows, cols in distinct))
    timing = functools.partial(measure_fn, distinct)
    return DTYPES[cached_choice(CACHE_FILE, key, tuple(DTYPES), timing, decide, cache_dir)]
