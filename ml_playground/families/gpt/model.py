"""A GPT in the nanoGPT lineage: pre-norm blocks, causal self-attention, tied embeddings.

Read top to bottom: config, attention, MLP, block, model. Shapes: B batch, T time, C channels,
H heads, D = C / H head width. The optional ``kv_cache`` lets generation feed one token at a
time; without it the model is exactly the plain training path.

Header-conditioned text (``<|party|>SPD<|year|>…<|text|>…<|end|>``) may add a *condition
embedding*: every position after a ``condition_marker`` token (``<|party|>``) gets a learned vector
for the token that follows the marker, until the ``condition_reset`` token (``<|end|>``). The
conditions are read from the token ids themselves, so data, batches and prompts stay plain text;
what changes is that each position sees the party directly instead of having to find it by
attention (the party is worth about 0.01 nats per token, too little gradient for a small model
to learn that attention within minutes). With ``condition_bias`` the same vector also reaches the logits
directly, through a head of its own: a learned bias over the vocabulary per condition, which is what a
party's choice of words is, learned without going through every layer first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ml_playground.core.activations import gelu
from ml_playground.core.linear_kernels import LinearKernel, linear
from ml_playground.core.rotary import inverse_frequencies, rotary_from_angles


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    # Options from modern recipes, each off by default (the plain nanoGPT path):
    rotary: bool = False  # rotary position embeddings (Su et al., 2021) instead of learned ones
    qk_norm: bool = False  # RMS-normalise queries and keys per head before attention
    activation: str = "gelu"  # or "relu2": ReLU squared (So et al., 2021)
    tie_weights: bool = True  # share the token embedding with the output head
    rope_base: float = 10000.0
    condition_marker: int | None = None  # id of the token (<|party|>) whose next token is a condition
    condition_reset: int | None = None  # id of the token (<|end|>) after which no condition holds
    condition_bias: bool = False  # with a condition marker: a learned logit bias per condition (module docstring)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's cannot drop only the bias)."""

    def __init__(self, width: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose product may run on oneDNN; see ``kernels``."""

    kernel: LinearKernel = "aten"

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # the name nn.Linear uses
        return linear(input, self.weight, self.bias, self.kernel)


class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    Buffers for ``capacity`` positions are allocated on first use and filled in place, so a
    generation step copies only the new token's keys and values.
    """

    def __init__(self, n_layer: int, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.lengths = [0] * n_layer
        self.last_token: torch.Tensor | None = None  # (B,) for condition embeddings
        self.condition: torch.Tensor | None = None  # (B,) the condition holding after the cached tokens

    @property
    def length(self) -> int:
        return self.lengths[0]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.lengths[layer], self.lengths[layer] + k.size(2)
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None or end > keys.size(2):
            capacity = max(end, self.capacity or 0)
            shape = (k.size(0), k.size(1), capacity, k.size(3))
            new_keys, new_values = k.new_empty(shape), v.new_empty(shape)
            if keys is not None and values is not None:
                new_keys[:, :, :start], new_values[:, :, :start] = keys[:, :, :start], values[:, :, :start]
            keys, values = new_keys, new_values
            self.keys[layer], self.values[layer] = keys, values
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        self.lengths[layer] = end
        return keys[:, :, :end], values[:, :, :end]


def rotary_tables(
    head_dim: int, start: int, length: int, base: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables ``apply_rotary`` takes for positions ``start`` .. ``start + length - 1``, (T, D) each."""
    positions = torch.arange(start, start + length, device=device, dtype=torch.float32)
    return rotary_from_angles(torch.outer(positions, inverse_frequencies(head_dim, base, device)))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) of the head dimension (its two halves) by the position's angle, with ``rotary_tables``.

    (x1 cos - x2 sin, x2 cos + x1 sin) as ``x * (cos, cos) + (x2, x1) * (-sin, sin)``: the same products and
    sums, so the same floats, in four operators whose gradients are the same four (slicing the halves and
    joining them again costs a zero-filled gradient per slice).
    """
    wide = x.float()
    rotated = wide * cos + wide.roll(x.size(-1) // 2, dims=-1) * sin
    return rotated.type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout  # attention weights and residual output; skipped when 0
        self.qk_norm = config.qk_norm

    def forward(
        self,
        x: torch.Tensor,
        shape: tuple[int, int],
        cache: KVCache | None = None,
        layer: int = 0,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``x`` holds the (B*T, C) tokens of ``shape`` (B, T); returns (B*T, C)."""
        (B, T), C = shape, x.size(-1)
        # (B*T, 3C) -> 3 x (B, H, T, D) views. Split on the channels rather than unbind a permuted
        # (B, T, 3, H, D): the same strides forward, but backward then joins the three gradients with
        # one cat instead of a stack and a copy (1-2% of a default training step).
        H, D = self.n_head, C // self.n_head
        qkv = self.qkv(x)
        float32_attention = torch.is_autocast_enabled("cpu") and x.device.type == "cpu"  # see below
        if float32_attention:  # cast once: norm, rotation and attention then run in float32
            qkv = qkv.float()
        if self.qk_norm or rotary is not None:
            # Queries and keys normalised and rotated together, as one (B, T, 2H, D) tensor: half the operators.
            qk, v = qkv.split([2 * C, C], dim=-1)
            qk = qk.view(B, T, 2 * H, D)
            if self.qk_norm:
                qk = F.rms_norm(qk, (D,))
            if rotary is not None:
                qk = apply_rotary(qk, rotary[0][:, None], rotary[1][:, None])  # tables (T, 1, D) for (B, T, 2H, D)
            q, k = (part.transpose(1, 2) for part in qk.split(H, dim=2))
            v = v.view(B, T, H, D).transpose(1, 2)
        else:
            q, k, v = (part.view(B, T, H, D).transpose(1, 2) for part in qkv.split(C, dim=-1))
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        dropout = self.dropout if self.training else 0.0
        if float32_attention:
            # CPU autocast runs attention in bfloat16, whose flash kernel's backward is the slow one: 4.6 ms a call
            # against 1.2 in float32 in the speedrun on an AMD EPYC (AVX-512 BF16), more than the bfloat16
            # products save. Attention is a small share of the products at these lengths: float32 it stays.
            with torch.autocast("cpu", enabled=False):
                y = attend(q, k, v, dropout)
        else:
            y = attend(q, k, v, dropout)
        out: torch.Tensor = self.proj(y.transpose(1, 2).reshape(B * T, C))
        return F.dropout(out, self.dropout, self.training) if self.dropout else out


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> torch.Tensor:
    """Causal attention of the last ``T`` positions (the queries) over all ``past + T`` keys."""
    T, past = q.size(2), k.size(2) - q.size(2)
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
    if T == 1:  # one new query may see every cached key: no mask needed
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    # New queries sit at positions past..past+T-1 and may see every key up to their own.
    mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


class ReluSquared(torch.autograd.Function):
    """relu(x)² with the gradient 2 relu(x) computed from the saved relu(x): one operator backward where autograd
    would run the square's and the relu's (the same floats)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        positive = F.relu(x)
        ctx.save_for_backward(positive)
        return positive.square()

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> torch.Tensor:
        positive: torch.Tensor = ctx.saved_tensors[0]
        return (positive + positive).mul_(grad_outputs[0])


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """ReLU² (So et al., 2021); with gradients, through ``ReluSquared``."""
    if not torch.is_grad_enabled() or not x.requires_grad:
        return F.relu(x).square()
    out: torch.Tensor = ReluSquared.apply(x)
    return out


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.relu2 = config.activation == "relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc(x)
        hidden = relu_squared(hidden) if self.relu2 else gelu(hidden)
        out: torch.Tensor = self.proj(hidden)
        return F.dropout(out, self.dropout, self.training) if self.dropout else out


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        shape: tuple[int, int],
        cache: KVCache | None = None,
        layer: int = 0,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), shape, cache, layer, rotary)
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = None if config.rotary else nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, config.bias)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        # decoding products of one or two rows in this many row blocks, by rows (core/row_products.py); none: plain
        self.decode_blocks: dict[int, int] = {}
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf, 2017)
        # one row per token that can follow the marker, plus a zero row for "no condition"
        conditioned = config.condition_marker is not None
        self.wce = (
            nn.Embedding(config.vocab_size + 1, config.n_embd, padding_idx=config.vocab_size) if conditioned else None
        )
        # the condition's vector read out as a bias over the vocabulary (zero while the embedding is)
        self.condition_head = (
            Linear(config.n_embd, config.vocab_size, bias=False) if conditioned and config.condition_bias else None
        )
        self.apply(self._init_weights)
        if self.wce is not None:
            nn.init.zeros_(self.wce.weight)  # starts as the unconditioned model
        # GPT-2's scaled init of the residual projections: the residual stream grows with depth.
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def use_linear_kernel(self, kernel: LinearKernel) -> GPT:
        """Run every linear layer's product on ``kernel`` (see ``kernels``); returns the model."""
        for module in self.modules():
            if isinstance(module, Linear):
                module.kernel = kernel
        return self

    def use_decode_blocks(self, blocks: Mapping[int, int]) -> GPT:
        """Multiply one or two rows by each weight in the row blocks ``blocks`` gives for that many rows
        ({rows: blocks}) when decoding one or two streams (``decode.py``; 1 or none: the plain product); returns
        the model."""
        self.decode_blocks = dict(blocks)
        return self

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - self.wpe.weight.numel() if exclude_embeddings and self.wpe is not None else total

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids (B, T); with a cache, ``idx`` continues the cached tokens.
        ``last_only``: the last position's logits alone (B, 1, vocab), what decoding reads of a prompt: the output
        head then runs on one position instead of T (with a tokenizer of 50,257 tokens it is most of a prompt's
        products)."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        x = self.wte(idx)
        conditions = None
        if self.wce is not None:
            conditions = self.condition_ids(idx, cache)
            x = x + self.wce(conditions)
        rotary = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        else:
            head_dim = self.config.n_embd // self.config.n_head
            rotary = rotary_tables(head_dim, start, T, self.config.rope_base, idx.device)
        # The blocks see the tokens as one (B*T, C) matrix: each linear layer is then a single product
        # with no reshapes around it, which saves two autograd nodes per layer (1-2% of a default
        # training step); only attention views them as (B, H, T, D).
        x = self.drop(x).view(B * T, -1)
        for layer, block in enumerate(self.blocks):
            x = block(x, (B, T), cache, layer, rotary)
        if last_only:
            x = x.view(B, T, -1)[:, -1]
            conditions = conditions[:, -1:] if conditions is not None else None
        logits: torch.Tensor = self.lm_head(self.ln_f(x))
        if self.condition_head is not None and conditions is not None:
            logits = logits + self.condition_logits(conditions)
        return logits.view(B, 1 if last_only else T, -1)

    def condition_logits(self, conditions: torch.Tensor) -> torch.Tensor:
        """(B*T, vocab) each position's condition bias; the head reads only the few distinct conditions present."""
        assert self.wce is not None
        assert self.condition_head is not None
        present, which = torch.unique(conditions, return_inverse=True)
        table = self.condition_head(self.wce(present))
        return F.embedding(which.view(-1), table)

    def condition_ids(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) the condition of each position: the token after the last marker, or ``vocab_size`` (none).

        A position right after the marker starts the condition (the condition token itself already
        has it); the position after the reset token ends it. With a cache, the state of the cached
        tokens carries over.
        """
        marker, reset, none = self.config.condition_marker, self.config.condition_reset, self.config.vocab_size
        if marker is None:
            return torch.full_like(idx, none)
        B, T = idx.shape
        before = cache.last_token if cache is not None and cache.last_token is not None else idx.new_full((B,), -1)
        carry = cache.condition if cache is not None and cache.condition is not None else idx.new_full((B,), none)
        previous = torch.cat([before[:, None], idx[:, :-1]], dim=1)
        events = torch.full_like(idx, -1)
        if reset is not None:
            events = torch.where(previous == reset, none, events)
        events = torch.where(previous == marker, idx, events)
        positions = torch.arange(T, device=idx.device).expand(B, T)
        last = torch.where(events >= 0, positions, -1).cummax(dim=1).values
        conditions = torch.where(last >= 0, events.gather(1, last.clamp(min=0)), carry[:, None])
        if cache is not None:
            cache.last_token, cache.condition = idx[:, -1], conditions[:, -1]
        return conditions
