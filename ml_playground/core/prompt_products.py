"""The products of prefilling prompts in a long-lived batch decoder: through oneDNN packs where measured faster.

A prompt's tokens go through every weight at once: products of dozens to hundreds of rows. PyTorch sends
a float32 ``F.linear`` on x86 to MKL's ``sgemm``, which on AMD processors takes slower code paths. On a
2-core AMD EPYC (2026-12-07, SmolLM2-135M's products without the output head), 25 rows took 117 ms
plain and 42 ms with each weight packed once in oneDNN's layout (``packed_products.py:pack_weight``); 100
rows 288 against 127 ms, 200 rows 313 against 230. A oneDNN pack takes any number of rows (the rows it
is made for only tune its layout: packs made for 8, 32, 128 and 256 rows ran 25, 100 and 200 rows within
a few percent of each other), so one pack of each weight serves every prompt. Through the model's own
forward, eight prompts of 28 tokens took 456 ms plain and 359 ms this way, one prompt 107 and 82 ms.

The packs are a copy of the weights, made at a decoder's first prompt (0.2 s for SmolLM2-135M), so only a
batch decoder of several rows uses them: a server keeps one for its lifetime, while one ``sample`` run
would pay more for packing than its one prompt saves. Whether packs are faster is measured once per
machine on the model's own weights (``PROMPT_ROWS`` rows, plain against packed) and cached
(``prompt_products_v1.json``). Packed results agree with ``F.linear`` to float rounding, not bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from ml_playground.core.measured_choice import alternating_medians, cached_choice, machine_key
from ml_playground.core.packed_products import (
    MIN_ROWS,
    Packs,
    Product,
    available_bytes,
    current_pack,
    pack_weight,
    packable,
    packed_product,
    shapes_key,
    takes_pack,
)

PROMPT_ROWS = 32  # the rows a prompt's products are timed at: a short prompt, or a few together
MARGIN = 1.1  # packs must be this much faster to be chosen, so a near tie stays plain
CACHE_FILE = "prompt_products_v1.json"


def measure(weights: list[torch.Tensor], plain: Product = F.linear, repeats: int = 5) -> dict[str, float]:
    """Median seconds of one round of ``PROMPT_ROWS`` rows by every weight: plain, and through oneDNN packs."""
    generator = torch.Generator().manual_seed(0)
    inputs = {w.shape[1]: torch.randn(PROMPT_ROWS, w.shape[1], generator=generator) for w in weights}
    packs = [pack_weight(w, PROMPT_ROWS, "onednn") for w in weights]

    def run_plain() -> None:
        for w in weights:
            plain(inputs[w.shape[1]], w, None)

    def run_packed() -> None:
        for w, pack in zip(weights, packs, strict=True):
            packed_product(inputs[w.shape[1]], pack, w, None, PROMPT_ROWS, "onednn")

    with torch.inference_mode():
        return alternating_medians({"plain": run_plain, "onednn": run_packed}, repeats)


def decide(seconds: Mapping[str, float]) -> str:
    """``onednn`` if its packs beat the plain product by ``MARGIN``, else ``plain``."""
    return "onednn" if seconds["plain"] >= MARGIN * seconds["onednn"] else "plain"


def measured_choice(weights: list[torch.Tensor], plain: Product, cache_dir: Path | None = None) -> bool:
    """Whether prompts by these weights run faster through packs on this machine: measured once, then cached."""
    key = machine_key(shapes_key(weights), getattr(plain, "__name__", type(plain).__name__), f"{PROMPT_ROWS} rows")
    timing = functools.partial(measure, weights, plain)  # called only when the cache has no answer
    return cached_choice(CACHE_FILE, key, ("plain", "onednn"), timing, decide, cache_dir) == "onednn"


class PromptProducts:
    """``F.linear`` for a prompt's products (``MIN_ROWS`` rows or more) by one of ``weights``: through a oneDNN
    pack of the weight where ``choose`` says packs are faster (default: measured, cached), else ``plain``.

    Each weight is packed at its first prompt product and again when it changed in place since (its
    version moved); none is packed where one copy of the weights would take more than ``MEMORY_SHARE`` of
    ``available()``."""

    def __init__(
        self,
        weights: Iterable[torch.Tensor],
        plain: Product = F.linear,
        choose: Callable[[list[torch.Tensor]], bool] | None = None,
        available: Callable[[], int] = available_bytes,
    ) -> None:
        self.weights, _ = packable(weights, ("onednn",), available)
        self.plain = plain
        chosen = self.weights and (choose or (lambda ws: measured_choice(ws, plain)))(list(self.weights.values()))
        self.packed = bool(chosen)
        self.packs: Packs = {}

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.numel() // max(x.shape[-1], 1)
        if not self.packed or rows < MIN_ROWS or not takes_pack(x, weight, self.weights):
            return self.plain(x, weight, bias)
        pack = current_pack(self.packs, weight, PROMPT_ROWS, "onednn")
        flat = x.reshape(rows, x.shape[-1])
        out = packed_product(flat, pack, weight, bias, PROMPT_ROWS, "onednn")
        return out.view(*x.shape[:-1], weight.shape[0])
