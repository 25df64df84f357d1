"""Continuous batching for a Hugging Face causal LM: one forward pass per step over every active stream.

The rows share the model's own KV cache (``DynamicCache``), left-padded to one length, with an
attention mask that hides each row's padding and explicit position ids per row (rotary angles are
applied before keys are cached, so where a row sits in the cache does not matter). New streams are
prefilled and join between steps; streams that arrive together are prefilled in one forward pass
(``add_many``), left-padded to the longest. The shorter side is padded on the left. A stream leaves at
once (its row is dropped from every layer), and columns that are padding for every remaining row are
cut off the front, so the cache spans the oldest active stream, not the server's lifetime.

``DynamicLayer`` copies its whole cache at every step to add a column (``torch.cat``). The batch's layers
are ``GrowingLayer``s instead: views into buffers with room for ``ROOM`` more columns, into which a step
writes its column. Attention then reads a strided view, which costs part of what the copy did, so the gain
is small: 8 rows of SmolLM2-135M, 127 steps, three alternating pairs on the bench's Xeon: 141.7-146.6
tokens/s against 137.4-141.0, the same tokens. (Two earlier tries, on 2026-12-05 and 12-06, measured
nothing beside the box's noise.)

The step's products run through ``core/packed_products.py``: each weight packed once for the batch's
band of rows, where this machine measured that faster (8 rows of SmolLM2-135M: products 39-42 -> 32 ms
on the bench's Xeon).

Sampling stays per stream: its own seeded generator and settings. What holds against decoding alone
(tested): each row's logits equal the one-stream path's to within float rounding (1e-4 in float32: a
product of eight rows and one of one row may add in another order, packed or not, and padded attention
sums over more zeros); greedy answers and seeded samples in the tests are the same token for token.

The batch takes streams whose whole answer fits in the context (prompt + ``max_new_tokens`` <= the
base model's context length) and that use no guidance; others keep the one-stream path
(``generation.py``). Models whose cache is not a plain ``DynamicCache`` of full-attention layers
(sliding windows, linear attention) keep the one-stream path too.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ml_playground.core.batch_rows import RowBatch
from ml_playground.core.packed_products import MIN_ROWS, Chooser, PackedProducts, Product, linear_layers, routed
from ml_playground.core.prompt_products import PromptProducts
from ml_playground.core.sampling_rules import SamplingParams

PromptRoute = tuple[list[nn.Linear], Product]  # a model's linear layers and the product its prompts run through
PromptChooser = Callable[[list[torch.Tensor]], bool]  # weights -> whether prompts by them run faster packed


def prompt_route(linears: list[nn.Linear], rows: int, choose: PromptChooser | None) -> PromptRoute | None:
    """How a batch decoder of ``rows`` rows prefills: through ``PromptProducts`` where it has several rows (a
    long-lived decoder, worth the packs), else plainly (None). ``choose``: default measured, cached."""
    if rows < MIN_ROWS:
        return None
    return linears, PromptProducts((layer.weight for layer in linears), choose=choose)


def _pad_left(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    """``columns`` zeros before the first entry along ``dim`` (-2 for a cache's (B, H, T, D), 1 for a mask)."""
    if columns == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


ROOM = 64  # columns a growing layer's buffers hold beyond what it has: a new buffer every 64 steps at most


def _full_attention_layers(cache: Any) -> list[Any]:
    """The cache's layers if each is a plain full-attention ``DynamicLayer`` (or our growing one); else []."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    if type(cache) is not DynamicCache:
        return []
    layers = list(cache.layers)
    return layers if all(type(layer) in (DynamicLayer, _growing_layer_class()) for layer in layers) else []


@functools.cache
def _growing_layer_class() -> type[Any]:
    """``GrowingLayer``, made at first use: ``transformers`` is imported only when a Hugging Face model is."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]  # transformers' class hook is untyped
        """A ``DynamicLayer`` whose keys and values are views into buffers with room to grow: ``update`` writes the
        new columns in place. Keys or values set from outside (the batch adding or dropping rows) are not views of
        the buffers any more, so the next ``update`` copies them into new ones."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
            self.keys, self.values = keys, values
            self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

        def _held(self) -> tuple[torch.Tensor, torch.Tensor]:
            keys, values = self.keys, self.values
            assert keys is not None
            assert values is not None
            return keys, values

        def _holds(self, columns: int) -> bool:
            if self.buffers is None:
                return False
            return all(
                view.data_ptr() == buffer.data_ptr()
                and view.shape[:2] == buffer.shape[:2]
                and view.stride() == buffer.stride()
                and buffer.size(-2) >= columns
                for view, buffer in zip(self._held(), self.buffers, strict=True)
            )

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            held = self._held()
            length = held[0].size(-2)
            end = length + key_states.size(-2)
            if self.buffers is None or not self._holds(end):
                made = [old.new_empty((*old.shape[:2], end + ROOM, old.size(-1))) for old in held]
                for buffer, old in zip(made, held, strict=True):
                    buffer[:, :, :length] = old
                self.buffers = (made[0], made[1])
            keys, values = self.buffers
            keys[:, :, length:end] = key_states
            values[:, :, length:end] = value_states
            self.keys, self.values = keys[:, :, :end], values[:, :, :end]
            return keys[:, :, :end], values[:, :, :end]

    return GrowingLayer


def left_padded(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``prompts`` as one batch left-padded to the longest: (ids, mask of each row's own tokens, each row's own
    positions), each (prompts, longest)."""
    width = max(len(prompt) for prompt in prompts)
    row_mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    ids = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        row_mask[i, width - len(prompt) :] = 1
    return ids, row_mask, (row_mask.cumsum(1) - 1).clamp(min=0)


def prefill(
    lm: nn.Module, prompts: list[list[int]], device: torch.device, route: PromptRoute | None = None
) -> tuple[Any, torch.Tensor]:
    """The model's forward over ``prompts`` as one ``left_padded`` batch (one prompt: alone, unpadded, as one stream
    is prefilled): (the model's output with its cache, the mask (prompts, longest)). Only the last position's logits
    are computed where the model can skip the rest (``logits_to_keep``): the output head is a fifth of
    SmolLM2-135M's products, and eight prompts of 28 tokens took 428 ms instead of 513 on a 2-core AMD EPYC.
    ``route``: the model's linear layers and the product they run through (``core/prompt_products.py``)."""
    ids, row_mask, positions = left_padded(prompts, device)
    last = last_logits_only(lm)
    with torch.inference_mode(), routed(*route) if route is not None else contextlib.nullcontext():
        if len(prompts) == 1:
            return lm(input_ids=ids, use_cache=True, **last), row_mask
        return lm(input_ids=ids, attention_mask=row_mask, position_ids=positions, use_cache=True, **last), row_mask


def last_logits_only(lm: nn.Module) -> dict[str, int]:
    """The keyword that has ``lm``'s forward compute the last position's logits alone, where it takes one."""
    return {"logits_to_keep": 1} if _keeps_logits(type(lm).forward) else {}


@functools.cache
def _keeps_logits(forward: Callable[..., object]) -> bool:
    """Whether a kind of model's forward takes ``logits_to_keep`` by name (``transformers``' causal LMs do)."""
    return "logits_to_keep" in inspect.signature(forward).parameters


class HfBatchedDecoder(RowBatch):
    """Up to ``rows`` streams of one causal LM decoded together; ``add`` a prompt, then ``step`` them all."""

    def __init__(
        self,
        lm: nn.Module,
        rows: int,
        context_length: int,
        pack: Chooser | None = None,
        plain: Product = F.linear,
        prompt: PromptChooser | None = None,
    ) -> None:
        """``pack``: how to run the products of a band of rows, plain or packed (``core/packed_products.py``); default:
        measured on this machine once, at construction (the engine's start). ``plain``: the product where nothing
        is packed (one or two rows). ``prompt``: whether prompts run through packs (``prompt_route``)."""
        super().__init__(rows, context_length)
        self.lm = lm
        self.device = next(lm.parameters()).device
        self.linears = linear_layers(lm)
        self.products = PackedProducts((layer.weight for layer in self.linears), rows, plain=plain, choose=pack)
        self.products.prepare()
        self.route = prompt_route(self.linears, rows, prompt)
        self.past: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)  # (rows, cache columns)
        self.positions = torch.zeros(0, dtype=torch.long, device=self.device)  # each row's next position

    @staticmethod
    def applies(lm: nn.Module) -> bool:
        """Whether this model's cache can be batched this way (probed once with a two-token prompt)."""
        device = next(lm.parameters()).device
        with torch.inference_mode():
            output = lm(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device), use_cache=True)
        return bool(_full_attention_layers(output.past_key_values))

    def add(self, prompt_ids: list[int], params: SamplingParams) -> tuple[int, int]:
        """Prefill a new stream alone and put it in the last row: (its handle, its first token)."""
        return self.add_many([prompt_ids], [params])[0]

    def add_many(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[tuple[int, int]]:
        """Prefill new streams in one forward pass (left-padded to the longest, each row masked to its own
        tokens and given its own positions) and put them in the last rows: (handle, first token) each.
        One prompt is prefilled alone, unpadded, as one stream is (through packed products where the decoder
        prefills that way: the same logits to float rounding)."""
        lengths = [len(prompt) for prompt in prompts]
        output, row_mask = prefill(self.lm, prompts, self.device, self.route)
        logits = output.logits[:, -1, :].float()
        if not self.rows:
            self.past, self.mask = output.past_key_values, row_mask
            growing = _growing_layer_class()
            self.past.layers = [growing(layer.keys, layer.values) for layer in _full_attention_layers(self.past)]
        else:
            width = max(self.mask.size(1), row_mask.size(1))
            grow, pad = width - self.mask.size(1), width - row_mask.size(1)  # columns before the old rows, the new
            for layer, new in zip(
                _full_attention_layers(self.past), _full_attention_layers(output.past_key_values), strict=True
            ):
                layer.keys = torch.cat([_pad_left(layer.keys, grow, -2), _pad_left(new.keys, pad, -2)])
                layer.values = torch.cat([_pad_left(layer.values, grow, -2), _pad_left(new.values, pad, -2)])
            self.mask = torch.cat([_pad_left(self.mask, grow, 1), _pad_left(row_mask, pad, 1)])
        self.positions = torch.cat([self.positions, self.positions.new_tensor(lengths)])
        return [self._join(settings, logits[i : i + 1]) for i, settings in enumerate(params)]

    def remove(self, handle: int) -> None:
        """The stream leaves; columns that are padding for every row left are cut off the front."""
        slot = self._slot(handle)
        self.rows.pop(slot)
        if not self.rows:
            self.past = None
            self.mask = self.mask[:0, :0]
            self.positions = self.positions[:0]
            return
        keep = torch.tensor([i for i in range(len(self.rows) + 1) if i != slot], device=self.device)
        self.mask = self.mask.index_select(0, keep)
        self.positions = self.positions.index_select(0, keep)
        first = int(self.mask.any(dim=0).long().argmax())  # the first column some row still attends to
        self.mask = self.mask[:, first:]
        for layer in _full_attention_layers(self.past):
            layer.keys = layer.keys.index_select(0, keep)[:, :, first:]
            layer.values = layer.values.index_select(0, keep)[:, :, first:]

    def logits(self) -> torch.Tensor:
        """One step over every row: the next-token logits (rows, V) after each row's last token."""
        n = len(self.rows)
        if int(self.positions.max()) + 1 > self.context_length:
            raise ValueError(f"a row would exceed the context length {self.context_length}")
        ids = torch.tensor([[row.last] for row in self.rows], dtype=torch.long, device=self.device)
        mask = F.pad(self.mask, (0, 1), value=1)
        with routed(self.linears, self.products):
            output = self.lm(
                input_ids=ids,
                attention_mask=mask,
                position_ids=self.positions.view(n, 1),
                past_key_values=self.past,
                use_cache=True,
            )
        self.past, self.mask = output.past_key_values, mask
        self.positions = self.positions + 1
        logits: torch.Tensor = output.logits[:, -1, :].float()
        return logits
