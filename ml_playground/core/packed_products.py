"""The products of a batched decode step with each weight packed once, where this machine runs them faster.

A decode step multiplies a few rows (one per stream) by every weight of the model. PyTorch sends a
float32 ``F.linear`` on x86 to MKL's ``sgemm``, which repacks the weight into its blocked layout on
every call: for one row MKL takes its matrix-vector path instead, but from three or four rows on the
repacking streams the weight twice. Measured on the Intel Xeon of ``make bench`` (2 threads), the
products of SmolLM2-135M's 30 layers took 21 ms for one row and 39-42 ms for eight; with the weights
packed once (``torch.ops.mkl._mkl_reorder_linear_weight``, the operator inductor uses for frozen CPU
models) eight rows took 32 ms, and the output head 5.9 ms instead of 10.3.

A pack is made for a fixed number of rows, and a product with any other count falls back to the plain
one. So rows are padded up to a band (4, 8, 16, ... up to the batch's capacity) and each row's result
does not depend on the others (tested). The band grows with the batch at once and shrinks once the rows
would fit in a quarter of it. Each set of packs is a copy of the weights, and packing them takes time
in the step that needs them, which stalls every stream: a batch of SmolLM2-135M swinging between 16 and
3 rows on a 2-core AMD EPYC took 214-283 ms in each first step after a swing against 31-66 ms for the
next. So a band's packs, once made, are kept while the sets held fit in a quarter of the memory
available at start-up (the least recently used set goes first): the same swings then cost 33-54 ms
after the first of each band. Nothing is packed where one copy of the weights would take more than
that quarter.

A second pack is oneDNN's (``torch.ops.mkldnn._reorder_linear_weight``, the weight reordered once into
oneDNN's blocked layout for the band's rows). MKL on AMD processors takes other code paths: on a
2-core AMD EPYC (2026-12-07, the 6-layer 384-wide bench model's 41 MiB cycled as a step reads them),
eight rows took 5.2 ms plain, 5.6 with MKL's pack and 2.2 with oneDNN's.

Which way wins depends on the CPU and its libraries, so each band is measured once on the model's own
weights, plain at three quarters of the band's rows against each pack at the band, and the answer is
cached (``packed_products_v2.json``, keyed by CPU, PyTorch, threads, the weights' shapes and the band;
``v1`` knew only MKL's pack). One or two rows always take the plain product (the decoders pass
``row_products.py``'s, in row blocks where this machine measured that faster). Packed results agree with
``F.linear`` to float rounding, not bit for bit (a different order of sums).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ml_playground.core.measured_choice import alternating_medians, cached_choice, machine_key

Product = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]  # F.linear's signature
Method = Literal["plain", "mkl", "onednn"]  # how a band's products run: unpacked, or with whose pack
Chooser = Callable[[int], Method]  # band (rows a pack is made for) -> how products of that band run fastest
PACKS: tuple[Method, ...] = ("mkl", "onednn")

MIN_ROWS = 3  # one or two rows: the plain product (in the decoders, row blocks where measured faster)
FIRST_BAND = 4
MARGIN = 1.1  # packing must be this much faster to be chosen, so a near tie stays plain
MEMORY_SHARE = 0.25  # each set of packs is a copy of the weights: all the sets kept take at most this share
CACHE_FILE = "packed_products_v2.json"


@functools.cache
def packing_available(method: Method = "mkl") -> bool:
    """Whether this PyTorch build has ``method``'s packed product and it computes ``F.linear`` (private operators)."""
    if method == "plain":
        return True
    try:
        x, weight = torch.arange(12.0).view(4, 3), torch.arange(15.0).view(5, 3)
        out = packed_product(x, pack_weight(weight, 4, method), weight, None, 4, method)
        return bool(torch.allclose(out, F.linear(x, weight)))
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):  # pragma: no cover (not such a build)
        return False


def pack_weight(weight: torch.Tensor, band: int, method: Method) -> torch.Tensor:
    """``weight`` packed for products of ``band`` rows by ``method`` (``mkl`` or ``onednn``)."""
    if method == "onednn":
        packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight, band)
        return packed
    mkl: torch.Tensor = torch.ops.mkl._mkl_reorder_linear_weight(weight, band)
    return mkl


def packed_product(
    x: torch.Tensor, pack: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, band: int, method: Method
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``band`` rows ``x`` (band, in) through ``weight``'s ``pack``."""
    if method == "onednn":
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, pack, bias, "none", [], "")
        return out
    mkl: torch.Tensor = torch.ops.mkl._mkl_linear(x, pack, weight, bias, band)
    return mkl


def available_bytes() -> int:
    """Memory the system can still give this process."""
    import psutil

    return int(psutil.virtual_memory().available)


def eligible(weight: torch.Tensor) -> bool:
    """A float32 CPU matrix (the packed operator's only case)."""
    return weight.dim() == 2 and weight.dtype == torch.float32 and weight.device.type == "cpu"


Packs = dict[int, tuple[torch.Tensor, int]]  # id(weight) -> (its pack, the weight's version when packed)


def packable(
    weights: Iterable[torch.Tensor], methods: Iterable[Method], available: Callable[[], int]
) -> tuple[dict[int, torch.Tensor], float]:
    """The weights packs may be made of (float32 CPU matrices, where this build has one of ``methods``), by id,
    and the room all packs kept may take (``MEMORY_SHARE`` of ``available()``): none where even one copy of
    them would take more than that."""
    usable = any(packing_available(method) for method in methods)
    chosen = {id(w): w for w in weights if usable and eligible(w)}
    room = MEMORY_SHARE * available() if chosen else 0.0
    if sum(w.numel() * w.element_size() for w in chosen.values()) > room:
        return {}, room
    return chosen, room


def takes_pack(x: torch.Tensor, weight: torch.Tensor, packed: Mapping[int, torch.Tensor]) -> bool:
    """Whether a product of ``x`` by ``weight`` may run packed: one of the ``packed`` weights, in its own dtype,
    with no autocast deciding the product's precision."""
    return id(weight) in packed and x.dtype == weight.dtype and not torch.is_autocast_enabled("cpu")


def current_pack(packs: Packs, weight: torch.Tensor, band: int, method: Method) -> torch.Tensor:
    """``weight``'s pack in ``packs``, made now where there is none or the weight changed in place since it was
    packed (its version moved)."""
    entry = packs.get(id(weight))
    if entry is None or entry[1] != weight._version:
        entry = (pack_weight(weight.detach(), band, method), weight._version)
        packs[id(weight)] = entry
    return entry[0]


def band_for(rows: int) -> int:
    """The rows a pack is made for when a product has ``rows`` rows: the next power of two, at least 4."""
    band = FIRST_BAND
    while band < rows:
        band *= 2
    return band


def shapes_key(weights: Iterable[torch.Tensor]) -> str:
    shapes = sorted(tuple(w.shape) for w in weights)
    return hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]


def measure_band(weights: list[torch.Tensor], band: int, plain: Product, repeats: int = 5) -> dict[str, float]:
    """Median seconds of one round of products over ``weights``: plain at 3/4 of ``band`` rows, each pack this
    build has at ``band``."""
    generator = torch.Generator().manual_seed(0)
    widths = {w.shape[1] for w in weights}
    rows = max(MIN_ROWS, band * 3 // 4)
    inputs = {width: torch.randn(band, width, generator=generator) for width in widths}

    def run_plain() -> None:
        for w in weights:
            plain(inputs[w.shape[1]][:rows], w, None)

    def run_packed(method: Method) -> Callable[[], None]:
        packs = [pack_weight(w, band, method) for w in weights]

        def one_round() -> None:
            for pack, w in zip(packs, weights, strict=True):
                packed_product(inputs[w.shape[1]], pack, w, None, band, method)

        return one_round

    runs = {"plain": run_plain} | {method: run_packed(method) for method in PACKS if packing_available(method)}
    with torch.inference_mode():
        return alternating_medians(runs, repeats)


def decide(seconds: Mapping[str, float]) -> Method:
    """The fastest pack if it beats the plain product by ``MARGIN``, else ``plain``."""
    timed: list[Method] = [method for method in PACKS if method in seconds]
    if not timed:
        return "plain"
    best: Method = min(timed, key=lambda method: seconds[method])
    return best if seconds["plain"] >= MARGIN * seconds[best] else "plain"


def measured_chooser(weights: list[torch.Tensor], plain: Product, cache_dir: Path | None = None) -> Chooser:
    """How to run a band's products: measured once per machine and shapes, then read from the cache."""
    shapes = shapes_key(weights)

    def choose(band: int) -> Method:
        chosen = cached_choice(
            CACHE_FILE,
            machine_key(shapes, f"{band} rows"),
            ("plain", *PACKS),
            lambda: measure_band(weights, band, plain),
            decide,
            cache_dir,
        )
        return "onednn" if chosen == "onednn" else "mkl" if chosen == "mkl" else "plain"

    return choose


class PackedProducts:
    """``F.linear`` for the steps of a batch decoder of up to ``capacity`` rows: packed where measured faster.

    ``weights`` are the ones worth packing (others always take ``plain``); ``choose`` answers for a band
    (default: measured and cached). ``prepare()`` asks it for every band up front, so no decode step
    pays for a measurement. A weight changed in place since it was packed (its version moved) is packed
    again before use. The sets of packs kept take at most ``MEMORY_SHARE`` of ``available()`` (``max_sets`` of
    them); weights that take more than that are never packed."""

    def __init__(
        self,
        weights: Iterable[torch.Tensor],
        capacity: int,
        plain: Product = F.linear,
        choose: Chooser | None = None,
        cache_dir: Path | None = None,
        available: Callable[[], int] = available_bytes,
    ) -> None:
        self.weights, room = packable(weights, PACKS, available)
        size = sum(w.numel() * w.element_size() for w in self.weights.values())
        self.max_sets = int(room // size) if self.weights else 0  # the sets of packs that fit in the room
        self.plain = plain
        self.capacity = capacity
        self.choose = choose or measured_chooser(list(self.weights.values()), plain, cache_dir)
        self.decisions: dict[int, Method] = {}
        self.band = 0  # the band the last packed product ran at; 0: none yet
        self.sets: dict[int, Packs] = {}  # band -> its packs, least recently used band first

    def bands(self) -> list[int]:
        """Every band a batch of ``capacity`` rows can need."""
        if self.capacity < MIN_ROWS or not self.weights:
            return []
        bands = [FIRST_BAND]
        while bands[-1] < self.capacity:
            bands.append(bands[-1] * 2)
        return bands

    def prepare(self) -> None:
        for band in self.bands():
            self._decided(band)

    def _decided(self, band: int) -> Method:
        if band not in self.decisions:
            chosen = self.choose(band)
            self.decisions[band] = chosen if chosen == "plain" or packing_available(chosen) else "plain"
        return self.decisions[band]

    def _use_band(self, needed: int, method: Method) -> None:
        """Run at ``needed``'s band if its packs are held, else at twice it where those are held (shrinking at a
        quarter), else make ``needed``'s set, the least recently used sets giving way beyond ``max_sets``."""
        current = self.band == needed or (self.band == 2 * needed and needed not in self.sets)
        if current and self.decisions.get(self.band) == method:  # the common case: the band of the last step
            return
        for band in (needed, 2 * needed):
            if band in self.sets and self.decisions.get(band) == method:
                self.sets[band] = self.sets.pop(band)  # the most recently used now
                self.band = band
                return
        while self.sets and len(self.sets) >= self.max_sets:
            del self.sets[next(iter(self.sets))]
        self.sets[needed] = {}
        self.band = needed

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.numel() // max(x.shape[-1], 1)
        if rows < MIN_ROWS or rows > self.capacity or not takes_pack(x, weight, self.weights):
            return self.plain(x, weight, bias)
        needed = band_for(rows)
        method = self._decided(needed)
        if method == "plain":
            return self.plain(x, weight, bias)
        self._use_band(needed, method)
        flat = x.reshape(rows, x.shape[-1])
        if rows < self.band:
            flat = F.pad(flat, (0, 0, 0, self.band - rows))
        method = self.decisions[self.band]
        pack = current_pack(self.sets[self.band], weight, self.band, method)
        out = packed_product(flat, pack, weight, bias, self.band, method)
        return out[:rows].view(*x.shape[:-1], weight.shape[0])

    def release(self) -> None:
        """Drop every set of packs (their memory); the next batched product packs again."""
        self.sets.clear()
        self.band = 0


def linear_layers(module: nn.Module) -> list[nn.Linear]:
    """Every ``nn.Linear`` inside ``module`` (a tied output head shares its weight with the embedding)."""
    return [layer for layer in module.modules() if isinstance(layer, nn.Linear)]


@contextmanager
def routed(layers: list[nn.Linear], products: Product) -> Iterator[None]:
    """Inside: each of ``layers`` computes its product through ``products`` (``F.linear``'s signature: packed
    products, row blocks); outside, nothing is changed."""

    def forward(layer: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: products(x, layer.weight, layer.bias)

    previous = [layer.__dict__.get("forward") for layer in layers]  # an instance forward someone else set
    for layer in layers:
        layer.forward = forward(layer)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        for layer, before in zip(layers, previous, strict=True):
            if before is None:
                del layer.forward
            else:
                layer.forward = before  # type: ignore[method-assign]
