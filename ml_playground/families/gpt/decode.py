"""One new token through a GPT with a KV cache, the path generation takes for every token after the prompt.

``GPT.forward`` with ``T = 1`` computes the same thing, but a decoding step of a small model is mostly
Python: 60 module calls, the embedding and position modules, the dropout module in eval mode, the
checks for options that are off. ``DecodeStep`` gathers each block's weights once and runs the same
operators in the same order as plain functions, so its logits equal ``GPT.forward``'s bit for bit (the
tests hold it to that). Measured on the benchmark machine (6 layers x 384, 2 threads): 540 -> 640 tokens/s.

Each product multiplies one row by a weight: where the model was given ``decode_blocks`` (measured at
load time, ``core/row_products.py``), in row blocks, whose sums run in another order: the logits then
agree with ``GPT.forward``'s to float rounding (tested to 1e-5, greedy tokens equal over 500 tokens).

Models with a condition embedding (``condition_marker``) keep the module path (the condition of a
position is tracked in the cache by ``GPT.condition_ids``), and so do FSDP models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ml_playground.core.activations import gelu
from ml_playground.core.lazy_types import is_fsdp_module
from ml_playground.core.linear_kernels import linear
from ml_playground.core.row_products import RowProducts
from ml_playground.families.gpt.model import GPT, Block, KVCache, LayerNorm, apply_rotary, rotary_tables
from ml_playground.families.gpt.model import Linear as ModelLinear

Product = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]  # F.linear's signature


@dataclass(frozen=True)
class _Block:
    ln_1: tuple[torch.Tensor, torch.Tensor | None]
    qkv: tuple[torch.Tensor, torch.Tensor | None]
    proj: tuple[torch.Tensor, torch.Tensor | None]
    ln_2: tuple[torch.Tensor, torch.Tensor | None]
    fc: tuple[torch.Tensor, torch.Tensor | None]
    mlp_proj: tuple[torch.Tensor, torch.Tensor | None]


def _weights(module: LayerNorm | ModelLinear) -> tuple[torch.Tensor, torch.Tensor | None]:
    return module.weight, module.bias


def _block(block: torch.nn.Module) -> _Block:
    assert isinstance(block, Block)
    attn, mlp = block.attn, block.mlp
    return _Block(
        _weights(block.ln_1), _weights(attn.qkv), _weights(attn.proj),
        _weights(block.ln_2), _weights(mlp.fc), _weights(mlp.proj),
    )  # fmt: skip


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return linear(x, weight, bias, "onednn")


def kernel_product(model: GPT) -> Product:
    """The product of ``model``'s linear layers as a plain function: ``F.linear``, or oneDNN's where they use it."""
    kernels = {layer.kernel for layer in model.modules() if isinstance(layer, ModelLinear)}
    return F.linear if kernels <= {"aten"} else _onednn_linear


def decode_matrices(model: GPT) -> list[torch.Tensor]:
    """The weights a decoding step multiplies by, in the order it reads them."""
    return [
        weight for block in model.blocks if isinstance(block, Block)
        for weight in (block.attn.qkv.weight, block.attn.proj.weight, block.mlp.fc.weight, block.mlp.proj.weight)
    ] + [model.lm_head.weight]  # fmt: skip


class DecodeStep:
    """``model(idx, cache)`` for one new token per row, ``idx`` (B, 1): logits (B, 1, vocab)."""

    def __init__(self, model: GPT) -> None:
        config = model.config
        self.config = config
        self.width = (config.n_embd,)
        self.head_dim = config.n_embd // config.n_head
        self.relu2 = config.activation == "relu2"
        self.wte = model.wte.weight
        self.wpe = model.wpe.weight if model.wpe is not None else None
        self.ln_f = _weights(model.ln_f)
        self.head = model.lm_head.weight
        self.blocks = [_block(block) for block in model.blocks]
        self.product: Product = RowProducts(decode_matrices(model), model.decode_blocks, kernel_product(model))

    @staticmethod
    def applies(model: GPT) -> bool:
        """Whether this path computes ``model``'s forward: our GPT itself (not a module wrapping one), no
        condition embedding, not training, not sharded (an FSDP model gathers its weights in its hooks)."""
        return isinstance(model, GPT) and model.wce is None and not model.training and not is_fsdp_module(model)

    def __call__(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        position = cache.length
        if position + 1 > self.config.block_size:
            raise ValueError(f"sequence of {position + 1} tokens exceeds block_size {self.config.block_size}")
        B = idx.size(0)
        C, H, D = self.width[0], self.config.n_head, self.head_dim
        product = self.product
        x = F.embedding(idx, self.wte)
        rotary = None
        if self.wpe is not None:
            x = x + F.embedding(torch.tensor([position], device=idx.device), self.wpe)
        else:
            rotary = rotary_tables(D, position, 1, self.config.rope_base, idx.device)
        for layer, block in enumerate(self.blocks):
            h = F.layer_norm(x, self.width, *block.ln_1, 1e-5)
            q, k, v = product(h, *block.qkv).view(B, 1, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
            if self.config.qk_norm:
                q, k = F.rms_norm(q, (D,)), F.rms_norm(k, (D,))
            if rotary is not None:
                q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
            k, v = cache.extend(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v)
            x = x + product(y.transpose(1, 2).reshape(B, 1, C), *block.proj)
            h = product(F.layer_norm(x, self.width, *block.ln_2, 1e-5), *block.fc)
            h = F.relu(h).square() if self.relu2 else gelu(h)
            x = x + product(h, *block.mlp_proj)
        return product(F.layer_norm(x, self.width, *self.ln_f, 1e-5), self.head, None)
