"""Decoding a Llama-shaped Hugging Face model (Llama, SmolLM2, Qwen2, Mistral) without its module calls.

A decode step of a small model is bound by reading its weights and by per-operator overhead. The
model's own forward spends about 50 operators a layer on one new token: its RMSNorm in six, rotary
through slices and a ``cat``, three products for q, k and v and two for the MLP's gate and up, the
cache's update in Python. ``LlamaDecoder`` runs the same arithmetic as plain functions over the
model's own weights: ``F.rms_norm``, q, k and v as one product and gate and up as one (the model's
weights become views of one fused tensor each, so nothing is copied), q and k rotated together,
grouped-query attention with the group's heads as the query rows of their key head, and the KV cache
of ``core/row_cache.py``. Measured on a 2-core AMD EPYC (2026-12-07, SmolLM2-135M in float32, the two
decoders alternating in one process): one row 32-34 -> 40-50 tokens/s, eight rows 145-151 -> 186-194.

Each row is one stream (continuous batching, as ``batched.py`` but with rows of their own lengths
instead of left padding); one stream alone is a batch of one row. Prompts are prefilled by the
model's own forward (those that arrive together in one pass, left-padded) and each one's cache copied
into its row.

The logits agree with the model's forward to float rounding, not bit for bit (the fused products and
``F.rms_norm`` add in another order): tested against it to 1e-4 on tiny Llama and Qwen2 models, and
greedy answers equal. Whether a model is of this shape is decided from its configuration and then
checked once when it is loaded for inference (``inference.py:Decoding``): two tokens through both paths
must agree, or the model keeps its own forward (``batched.py`` and ``generation.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ml_playground.core.batch_rows import RowBatch
from ml_playground.core.packed_products import Chooser, PackedProducts, Product, linear_layers
from ml_playground.core.rotary import rotary_from_angles
from ml_playground.core.row_cache import CachedRows, RowCache
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.families.hf_lora.batched import PromptChooser, prefill, prompt_route

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
ROPE_TYPES = ("default", "linear", "llama3")  # inverse frequencies fixed at load; dynamic kinds change with length
FIRST_COLUMNS = 256  # cache columns a row has before the buffers grow
PROBE_TOLERANCE = 1e-3  # the start-up check: largest logit difference allowed against the model's forward


@dataclass(frozen=True)
class _Layer:
    input_norm: torch.Tensor
    qkv: tuple[torch.Tensor, torch.Tensor | None]
    out: tuple[torch.Tensor, torch.Tensor | None]
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


def _config_fits(lm: nn.Module) -> bool:
    config = getattr(lm, "config", None)
    if type(lm).__name__ not in ARCHITECTURES or config is None:
        return False
    rotary = getattr(getattr(lm, "model", None), "rotary_emb", None)
    layer_types = getattr(config, "layer_types", None)
    # Every layer attends to every earlier token: as its layer types say, or (Mistral) no sliding window set.
    full = set(layer_types) == {"full_attention"} if layer_types else getattr(config, "sliding_window", None) is None
    return (
        full
        and getattr(rotary, "rope_type", None) in ROPE_TYPES
        and getattr(config, "hidden_act", None) == "silu"
        and getattr(config, "pretraining_tp", 1) == 1
        and not getattr(config, "mlp_bias", False)
        and not getattr(config, "use_sliding_window", False)
    )


def fuse(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for ``linears`` side by side; each layer's own becomes a view of it (no copy kept)."""
    weight = torch.cat([layer.weight.detach() for layer in linears])
    biases = [layer.bias for layer in linears]
    bias = torch.cat([b.detach() for b in biases if b is not None]) if all(b is not None for b in biases) else None
    if any(b is not None for b in biases) and bias is None:
        raise ValueError("some of these layers have a bias and some not")
    start = 0
    for layer in linears:
        rows = layer.weight.size(0)
        layer.weight.data = weight[start : start + rows]
        if bias is not None:
            assert layer.bias is not None
            layer.bias.data = bias[start : start + rows]
        start += rows
    return weight, bias


class LlamaWeights:
    """A Llama-shaped model's weights as one decode step reads them (q, k, v fused, gate and up fused)."""

    def __init__(self, lm: nn.Module) -> None:
        config: Any = lm.config
        body: Any = lm.model
        self.lm = lm
        head: Any = lm.lm_head
        self.embedding: torch.Tensor = body.embed_tokens.weight
        self.final_norm: torch.Tensor = body.norm.weight
        self.head: torch.Tensor = head.weight
        self.eps = float(config.rms_norm_eps)
        first = body.layers[0].self_attn
        self.heads, self.kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads)
        self.head_dim = int(first.head_dim)
        self.width = int(config.hidden_size)
        self.inv_freq: torch.Tensor = body.rotary_emb.inv_freq.float()
        self.attention_scaling = float(body.rotary_emb.attention_scaling)
        self.layers: list[_Layer] = []
        for layer in body.layers:
            attention, mlp = layer.self_attn, layer.mlp
            out = attention.o_proj
            self.layers.append(
                _Layer(
                    layer.input_layernorm.weight,
                    fuse([attention.q_proj, attention.k_proj, attention.v_proj]),
                    (out.weight, out.bias),
                    layer.post_attention_layernorm.weight,
                    fuse([mlp.gate_proj, mlp.up_proj])[0],
                    mlp.down_proj.weight,
                )
            )

    @staticmethod
    def of(lm: nn.Module) -> LlamaWeights | None:
        """The weights of ``lm`` if it is of this shape (from its configuration), else None."""
        return LlamaWeights(lm) if _config_fits(lm) else None

    def matrices(self) -> list[torch.Tensor]:
        """The weights a step multiplies by, in the order it reads them."""
        return [
            weight for layer in self.layers for weight in (layer.qkv[0], layer.out[0], layer.gate_up, layer.down)
        ] + [self.head]  # fmt: skip


class LlamaDecoder(CachedRows):
    """Up to ``rows`` streams of a Llama-shaped model decoded together; ``add`` a prompt, then ``step`` them all."""

    def __init__(
        self,
        weights: LlamaWeights,
        rows: int,
        context_length: int,
        pack: Chooser | None = None,
        plain: Product = F.linear,
        columns: int = FIRST_COLUMNS,
        prompt: PromptChooser | None = None,
    ) -> None:
        """``pack``: how to run the products of a band of rows (``core/packed_products.py``); default: measured on
        this machine once. ``plain``: the product where nothing is packed (one or two rows). ``columns``: the
        cache's room before it grows. ``prompt``: whether prompts run through packs (``batched.py:prompt_route``)."""
        super().__init__(rows, context_length)
        self.weights = weights
        self.products = PackedProducts(weights.matrices(), rows, plain=plain, choose=pack)
        self.products.prepare()
        self.route = prompt_route(linear_layers(weights.lm), rows, prompt)
        embedding = weights.embedding
        self.cache = RowCache(
            len(weights.layers),
            rows,
            weights.kv_heads,
            weights.head_dim,
            columns=columns,
            limit=context_length,
            dtype=embedding.dtype,
            device=embedding.device,
        )

    def add(self, prompt_ids: list[int], params: SamplingParams) -> tuple[int, int]:
        """Prefill a new stream (the model's own forward) into the next row: (its handle, its first token)."""
        return self.add_many([prompt_ids], [params])[0]

    def add_many(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[tuple[int, int]]:
        """Prefill new streams in one forward pass of the model (left-padded, ``batched.py:prefill``) and put each
        one's own columns of the cache in a row of its own: (handle, first token) each."""
        output, row_mask = prefill(self.weights.lm, prompts, self.weights.embedding.device, self.route)
        width = row_mask.size(1)
        logits = output.logits[:, -1, :].float()
        started = []
        for i, (prompt, settings) in enumerate(zip(prompts, params, strict=True)):
            first = width - len(prompt)
            self.cache.put(
                len(self.rows),
                [(layer.keys[i, :, first:], layer.values[i, :, first:]) for layer in output.past_key_values.layers],
            )
            started.append(self._join(settings, logits[i : i + 1]))
        return started

    def logits(self) -> torch.Tensor:
        """One step over every row: the next-token logits (rows, V) after each row's last token."""
        n = len(self.rows)
        w, cache, product = self.weights, self.cache, self.products
        H, KVH, D, C = w.heads, w.kv_heads, w.head_dim, w.width
        device = w.embedding.device
        step = cache.step(n, w.embedding.dtype)
        # rotate_half(x) * sin == roll(x, D/2) * (-sin, sin): q and k of every head rotated in one expression, in the
        # model's dtype as the model rotates them (``apply_rotary`` of our GPT widens to float32 first)
        cos, sin = (
            table.mul(w.attention_scaling).to(w.embedding.dtype).view(n, 1, D)
            for table in rotary_from_angles(torch.outer(step.positions.float(), w.inv_freq))
        )
        idx = torch.tensor([row.last for row in self.rows], dtype=torch.long, device=device)
        x = F.embedding(idx, w.embedding)  # (n, C)
        for index, layer in enumerate(w.layers):
            h = F.rms_norm(x, (C,), layer.input_norm, w.eps)
            qkv = product(h, *layer.qkv).view(n, H + 2 * KVH, D)
            qk = qkv[:, : H + KVH]
            qk = qk * cos + torch.roll(qk, D // 2, -1) * sin
            keys, values = cache.extend(index, step, qk[:, H:], qkv[:, H + KVH :])
            # The heads that share a key head are its query rows: one position each, the same columns visible.
            queries = qk[:, :H].reshape(n, KVH, H // KVH, D)
            y = F.scaled_dot_product_attention(queries, keys, values, attn_mask=step.mask)
            x = x + product(y.reshape(n, H * D), *layer.out)
            gate, up = product(F.rms_norm(x, (C,), layer.post_norm, w.eps), layer.gate_up, None).chunk(2, -1)
            x = x + product(F.silu(gate) * up, layer.down, None)
        cache.advance(n)
        logits = product(F.rms_norm(x, (C,), w.final_norm, w.eps), w.head, None)
        return logits.float()


def agrees(weights: LlamaWeights, plain: Product = F.linear) -> bool:
    """Whether a step of ``LlamaDecoder`` gives the model's own logits (to ``PROBE_TOLERANCE``): two prompt tokens,
    then a third, through both."""
    lm = weights.lm
    device = weights.embedding.device
    probe = [0, 1]
    decoder = LlamaDecoder(weights, 1, context_length=4, pack=lambda band: "plain", plain=plain)
    with torch.inference_mode():
        _, token = decoder.add(probe, SamplingParams(max_new_tokens=1, temperature=0.0))
        try:
            ours = decoder.logits()
        except RuntimeError:  # a shape this step does not compute
            return False
        theirs = lm(input_ids=torch.tensor([[*probe, token]], device=device)).logits[:, -1, :].float()
    return bool((ours - theirs).abs().max() <= PROBE_TOLERANCE * max(1.0, float(theirs.abs().max())))


def stream_rows(decoder: RowBatch, prompt: torch.Tensor, params: SamplingParams) -> Iterator[torch.Tensor]:
    """One stream through ``decoder`` (a batch of one row): each new token (1, 1), drawn as ``generation.py`` draws."""
    handle, token = decoder.add(prompt[0].tolist(), params)
    device = prompt.device
    try:
        for produced in range(params.max_new_tokens):
            if produced:
                token = decoder.step()[handle]
            yield torch.tensor([[token]], dtype=torch.long, device=device)
    finally:
        decoder.remove(handle)
