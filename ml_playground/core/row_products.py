"""One or two rows times a weight, the products of decoding one or two streams: plain, or in row blocks.

Decoding one token multiplies one row by every weight of the model, so a step is bound by how fast the
weights stream from memory. PyTorch sends that product to MKL's matrix-vector path. Measured on a
2-core AMD EPYC (AVX-512, no AMX; 2026-12-07) over the 41 MiB of float32 weights of the bench's 6-layer
384-wide model, cycled as a decoding step reads them: ``F.linear`` streamed them at 10-11 GB/s with
one thread or two, while a plain sum over the same tensors reads at 33-37 GB/s and llama.cpp decodes
the same weights at about 35. The same products with each weight viewed as ``k`` blocks of rows and run
as one batched product (``torch.bmm`` of ``(k, out/k, in)`` by the row, ``k`` of 2, 4 or 8) streamed
them at 33-42 GB/s (27 with one thread). Which way wins depends on the CPU and its libraries (on an
Intel Xeon MKL's own path is fast), so it is measured once per machine on the model's own weights and
kept (``row_products_v1.json``, keyed by CPU, PyTorch, threads, the weights' shapes, the plain product
and the rows).

Two rows (a batch decoder with two streams) take MKL's matrix-matrix path, which on the same AMD EPYC
was slower still: SmolLM2-135M's 121 weights cycled took 85 ms for two rows plain, 19 ms in 4 or 8
blocks (both rows as the two columns of each block's product), 31 ms with oneDNN's packed weights; one
row in blocks took 14 ms. So two rows are measured and chosen for on their own; three rows and more are
the batched products' (``packed_products.py``).

Blocks compute the same dot products with the sums in another order: results agree with ``F.linear``
to float rounding, not bit for bit. ``blocks = 1`` is the plain product.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from ml_playground.core.measured_choice import alternating_medians, cached_choice, machine_key
from ml_playground.core.packed_products import Product, eligible, shapes_key

CANDIDATES = (2, 4, 8)  # blocks of rows tried besides the plain product
FEW_ROWS = (1, 2)  # the row counts measured and run in blocks; more rows are the batched products' case
MARGIN = 1.1  # blocks must be this much faster to be chosen, so a near tie stays plain
CACHE_FILE = "row_products_v1.json"


def in_blocks(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, blocks: int) -> torch.Tensor:
    """``F.linear`` of one or a few rows ``x`` (..., in) as ``blocks`` row blocks of ``weight`` in one batched
    product."""
    out, width = weight.shape
    return blocked(x, weight.view(blocks, out // blocks, width), bias)


def blocked(x: torch.Tensor, stacked: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Rows ``x`` (..., in) times a weight viewed as ``stacked`` row blocks (blocks, out/blocks, in)."""
    blocks, rows, width = stacked.shape
    flat = x if x.is_contiguous() else x.contiguous()
    count = flat.numel() // width
    # The rows as the (width, count) columns of every block, whose elements lie one apart in the transposed
    # layout: with the columns laid out plainly instead, ``bmm`` took a path 6x slower on the AMD EPYC above.
    columns = flat.as_strided((blocks, width, count), (0, 1, width))
    product = (
        torch.bmm(stacked, columns) if bias is None else torch.baddbmm(bias.view(blocks, rows, 1), stacked, columns)
    )
    if count > 1:  # (blocks, rows, count) -> (count, blocks * rows)
        product = product.permute(2, 0, 1)
    return product.reshape(*x.shape[:-1], blocks * rows)


def measure(
    weights: list[torch.Tensor], plain: Product = F.linear, repeats: int = 7, rows: int = 1
) -> dict[str, float]:
    """Median seconds of one round over ``weights`` (``rows`` rows each, as a decoding step reads them), plain and
    in each number of blocks (a weight whose rows do not split evenly takes the plain product in that round)."""
    generator = torch.Generator().manual_seed(0)
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], generator=generator) for w in weights}

    def run(blocks: int) -> Callable[[], None]:
        def one_round() -> None:
            for w in weights:
                x = inputs[w.shape[1]]
                if blocks > 1 and w.shape[0] % blocks == 0:
                    in_blocks(x, w, None, blocks)
                else:
                    plain(x, w, None)

        return one_round

    with torch.inference_mode():
        return alternating_medians({str(blocks): run(blocks) for blocks in (1, *CANDIDATES)}, repeats)


def decide(seconds: Mapping[str, float]) -> str:
    """The fastest number of blocks if it beats the plain product by ``MARGIN``, else ``"1"``."""
    best = min(CANDIDATES, key=lambda blocks: seconds[str(blocks)])
    return str(best) if seconds["1"] >= MARGIN * seconds[str(best)] else "1"


def measured_blocks(
    weights: Iterable[torch.Tensor], plain: Product = F.linear, cache_dir: Path | None = None
) -> dict[int, int]:
    """How many row blocks this machine multiplies one row, and two rows, by these weights fastest in (1: plain),
    measured once per machine, PyTorch, threads and shapes, then read from the cache: {rows: blocks}."""
    usable = [w.detach() for w in weights if eligible(w)]
    if not usable:
        return dict.fromkeys(FEW_ROWS, 1)
    against = getattr(plain, "__name__", type(plain).__name__)  # F.linear, or the oneDNN product it is timed against
    choices = tuple(str(blocks) for blocks in (1, *CANDIDATES))
    blocks: dict[int, int] = {}
    for rows in FEW_ROWS:
        key = machine_key(shapes_key(usable), against, f"{rows} row{'s' if rows > 1 else ''}")
        timing = functools.partial(measure, usable, plain, rows=rows)
        blocks[rows] = int(cached_choice(CACHE_FILE, key, choices, timing, decide, cache_dir))
    return blocks


class RowProducts:
    """``F.linear`` where one or two rows are multiplied by one of ``weights``, in the row blocks ``blocks`` gives
    for that many rows ({rows: blocks}); any other product (more rows, another weight, another dtype, under
    autocast) is ``plain``'s."""

    def __init__(self, weights: Iterable[torch.Tensor], blocks: Mapping[int, int], plain: Product = F.linear) -> None:
        self.blocks = {rows: count for rows, count in blocks.items() if count > 1}
        self.plain = plain
        usable = [w for w in weights if eligible(w)]
        # views, made once: a step looks them up by weight and block count
        self.weights = {
            (id(w), count): w.view(count, w.shape[0] // count, w.shape[1])
            for count in set(self.blocks.values())
            for w in usable
            if w.shape[0] % count == 0
        }

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        count = self.blocks.get(x.numel() // max(x.shape[-1], 1), 1)
        stacked = self.weights.get((id(weight), count)) if count > 1 else None
        if stacked is None or x.dtype != weight.dtype or torch.is_autocast_enabled("cpu"):
            return self.plain(x, weight, bias)
        return blocked(x, stacked, bias)
