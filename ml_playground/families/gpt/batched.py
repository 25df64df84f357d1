"""Continuous batching for the GPT family: one forward pass per step over every active stream.

A decode step of a small model is bound by reading its weights: eight rows cost little more than one.
Each stream is a row of the KV cache of ``core/row_cache.py`` with its own length; a step feeds every
row's last token at its own position (learned position embeddings or rotary angles per row) and masks
each row's attention to its own length. A new stream is prefilled alone (``GPT.forward`` with a
cache of its own, copied into its row) and joins at the next step; a stream leaves at once.

The step's products run through ``core/packed_products.py``: each weight packed once for the batch's
band of rows, where this machine measured that faster.

Sampling stays per stream: its own seeded generator and settings. What holds against decoding alone
(tested): each row's logits equal ``GPT.forward``'s on the same tokens to within float32 rounding
(1e-4): a product of eight rows and one of one row may add in another order, packed or not. Greedy
answers and seeded samples in the tests are the same token for token, alone or beside others.

The batch takes streams whose whole answer fits in the context (prompt + ``max_new_tokens`` <= block
size) and that use no guidance; others keep the one-stream path (``generation.py``), whose window
slides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ml_playground.core.activations import gelu
from ml_playground.core.packed_products import Chooser, PackedProducts
from ml_playground.core.rotary import inverse_frequencies, rotary_from_angles
from ml_playground.core.row_cache import CachedRows, RowCache
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.families.gpt.decode import DecodeStep, decode_matrices
from ml_playground.families.gpt.model import GPT, KVCache, apply_rotary


class BatchedDecoder(CachedRows):
    """Up to ``rows`` streams of one GPT decoded together; ``add`` a prompt, then ``step`` them all."""

    def __init__(self, model: GPT, rows: int, pack: Chooser | None = None) -> None:
        """``pack``: how to run the products of a band of rows, plain or packed (``core/packed_products.py``); default:
        measured on this machine once, at construction (the engine's start)."""
        super().__init__(rows, model.config.block_size)
        self.model = model
        self.step_weights = DecodeStep(model)
        self.products = PackedProducts(decode_matrices(model), rows, plain=self.step_weights.product, choose=pack)
        self.products.prepare()
        config = model.config
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        weight = model.wte.weight
        self.cache = RowCache(
            config.n_layer,
            rows,
            self.n_head,
            self.head_dim,
            columns=self.context_length,
            limit=self.context_length,
            dtype=weight.dtype,
            device=weight.device,
        )
        self.inv_freq = inverse_frequencies(self.head_dim, config.rope_base, weight.device)

    @staticmethod
    def applies(model: GPT) -> bool:
        return DecodeStep.applies(model)

    def add(self, prompt_ids: list[int], params: SamplingParams) -> tuple[int, int]:
        """Prefill a new stream into the next row: (its handle, its first token)."""
        cache = KVCache(self.model.config.n_layer, capacity=self.context_length)
        with torch.inference_mode():
            ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.cache.lengths.device)
            logits = self.model(ids, cache, last_only=True)[:, -1, :]
        length = len(prompt_ids)
        layers = [
            (keys[0, :, :length], values[0, :, :length])
            for keys, values in zip(cache.keys, cache.values, strict=True)
            if keys is not None and values is not None
        ]
        self.cache.put(len(self.rows), layers)
        return self._join(params, logits)

    def logits(self) -> torch.Tensor:
        """One step over every row: the next-token logits (rows, V) after each row's last token."""
        n = len(self.rows)
        weights, product = self.step_weights, self.products
        config = weights.config
        C, H, D = weights.width[0], self.n_head, self.head_dim
        device = self.inv_freq.device
        cache = self.cache
        step = cache.step(n, weights.wte.dtype)
        positions = step.positions
        idx = torch.tensor([[row.last] for row in self.rows], dtype=torch.long, device=device)
        x = F.embedding(idx, weights.wte)
        rotary = None
        if weights.wpe is not None:
            x = x + F.embedding(positions, weights.wpe).unsqueeze(1)
        else:
            rotary = rotary_from_angles(torch.outer(positions.float(), self.inv_freq).view(n, 1, 1, D // 2))
        for layer, block in enumerate(weights.blocks):
            h = F.layer_norm(x, weights.width, *block.ln_1, 1e-5)
            q, k, v = product(h, *block.qkv).view(n, 1, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
            if config.qk_norm:
                q, k = F.rms_norm(q, (D,)), F.rms_norm(k, (D,))
            if rotary is not None:
                q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
            keys, values = cache.extend(layer, step, k, v)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=step.mask)
            x = x + product(y.transpose(1, 2).reshape(n, 1, C), *block.proj)
            h = product(F.layer_norm(x, weights.width, *block.ln_2, 1e-5), *block.fc)
            h = F.relu(h).square() if weights.relu2 else gelu(h)
            x = x + product(h, *block.mlp_proj)
        cache.advance(n)
        return product(F.layer_norm(x, weights.width, *weights.ln_f, 1e-5), weights.head, None)[:, 0, :]
