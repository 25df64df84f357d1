"""Continuous batching for the GPT family: one forward pass per step over every active stream.

A decode step of a small model is bound by reading its weights: eight rows cost little more than one.
Each stream is a row of a padded KV cache with its own length; a step feeds every row's last token at
its own position (learned position embeddings or rotary angles per row) and masks each row's attention
to its own length. Rows stay packed at the front (a finished row's slot is filled by the last row), so
the caches are read as views, never gathered. A new stream is prefilled alone (``GPT.forward`` with a
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

from ml_playground.core.batch_rows import RowBatch
from ml_playground.core.packed_products import Chooser, PackedProducts
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.families.gpt.decode import DecodeStep, decode_matrices
from ml_playground.families.gpt.model import GPT, KVCache, apply_rotary, rotary_from_angles


class BatchedDecoder(RowBatch):
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
        device = model.wte.weight.device
        dtype = model.wte.weight.dtype
        shape = (rows, self.n_head, self.context_length, self.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.inv_freq = 1.0 / (
            config.rope_base ** (torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32) / self.head_dim)
        )

    @staticmethod
    def applies(model: GPT) -> bool:
        return DecodeStep.applies(model)

    def add(self, prompt_ids: list[int], params: SamplingParams) -> tuple[int, int]:
        """Prefill a new stream into the next row: (its handle, its first token)."""
        slot = len(self.rows)
        device = self.lengths.device
        cache = KVCache(len(self.keys), capacity=self.context_length)
        with torch.inference_mode():
            logits = self.model(torch.tensor([prompt_ids], dtype=torch.long, device=device), cache)[:, -1, :]
        length = len(prompt_ids)
        for layer, (keys, values) in enumerate(zip(cache.keys, cache.values, strict=True)):
            assert keys is not None
            assert values is not None
            self.keys[layer][slot, :, :length] = keys[0, :, :length]
            self.values[layer][slot, :, :length] = values[0, :, :length]
        self.lengths[slot] = length
        return self._join(params, logits)

    def remove(self, handle: int) -> None:
        """The stream leaves; the last row moves into its slot."""
        slot = self._slot(handle)
        last = len(self.rows) - 1
        if slot != last:
            length = int(self.lengths[last])
            for keys, values in zip(self.keys, self.values, strict=True):
                keys[slot, :, :length] = keys[last, :, :length]
                values[slot, :, :length] = values[last, :, :length]
            self.lengths[slot] = self.lengths[last]
            self.rows[slot] = self.rows[last]
        self.rows.pop()

    def logits(self) -> torch.Tensor:
        """One step over every row: the next-token logits (rows, V) after each row's last token."""
        n = len(self.rows)
        weights, product = self.step_weights, self.products
        config = weights.config
        C, H, D = weights.width[0], self.n_head, self.head_dim
        device = self.lengths.device
        positions = self.lengths[:n].clone()
        if int(positions.max()) + 1 > self.context_length:
            raise ValueError(f"a row would exceed block_size {self.context_length}")
        idx = torch.tensor([[row.last] for row in self.rows], dtype=torch.long, device=device)
        x = F.embedding(idx, weights.wte)
        rotary = None
        if weights.wpe is not None:
            x = x + F.embedding(positions, weights.wpe).unsqueeze(1)
        else:
            rotary = rotary_from_angles(torch.outer(positions.float(), self.inv_freq).view(n, 1, 1, D // 2))
        span = int(positions.max()) + 1
        mask = None  # one row sees every column up to its own length: nothing to mask
        if n > 1:
            visible = (torch.arange(span, device=device).view(1, span) <= positions.view(n, 1)).view(n, 1, 1, span)
            mask = torch.zeros(visible.shape, dtype=x.dtype, device=device).masked_fill_(~visible, float("-inf"))
        # Where each row's new key goes in the caches seen as (rows * heads * columns, head_dim): one index for
        # every layer's keys and values (``index_copy_``: 7 against 11 us a call for one row, 10 against 14 for
        # eight, than ``cache[rows, :, positions] =`` on the AMD EPYC of ``core/row_products.py``).
        heads = torch.arange(n * H, device=device).view(n, H)
        slots = (heads * self.context_length + positions.view(n, 1)).view(n * H)
        for layer, block in enumerate(weights.blocks):
            h = F.layer_norm(x, weights.width, *block.ln_1, 1e-5)
            q, k, v = product(h, *block.qkv).view(n, 1, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
            if config.qk_norm:
                q, k = F.rms_norm(q, (D,)), F.rms_norm(k, (D,))
            if rotary is not None:
                q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
            keys, values = self.keys[layer], self.values[layer]
            keys.view(-1, D).index_copy_(0, slots, k.reshape(n * H, D))
            values.view(-1, D).index_copy_(0, slots, v.reshape(n * H, D))
            y = F.scaled_dot_product_attention(q, keys[:n, :, :span], values[:n, :, :span], attn_mask=mask)
            x = x + product(y.transpose(1, 2).reshape(n, 1, C), *block.proj)
            h = product(F.layer_norm(x, weights.width, *block.ln_2, 1e-5), *block.fc)
            h = F.relu(h).square() if weights.relu2 else F.gelu(h)
            x = x + product(h, *block.mlp_proj)
        self.lengths[:n] += 1
        return product(F.layer_norm(x, weights.width, *weights.ln_f, 1e-5), weights.head, None)[:, 0, :]
