"""A from-scratch GPT checkpoint as a standard ``transformers`` model folder (no ``trust_remote_code``).

The nanoGPT layout (learned positions, pre-norm LayerNorm blocks, GELU or ReLU² MLP, tied or
untied head) maps onto ``GPT2LMHeadModel``; rotary position embeddings onto ``GPTNeoXForCausalLM``
(rotary over the whole head, sequential residual). Missing biases become zeros, which computes the
same function. QK-norm has no counterpart in either and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ml_playground.export.request import ExportError
from ml_playground.families.gpt.model import GPTConfig


def _zeros_if_none(state: Mapping[str, torch.Tensor], name: str, width: int) -> torch.Tensor:
    return state[name] if name in state else torch.zeros(width)


def head_weight(config: GPTConfig, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A tied head is the embedding (in an EMA state only the embedding's average is authoritative)."""
    return state["wte.weight"] if config.tie_weights else state["lm_head.weight"]


def check_exportable(config: GPTConfig) -> None:
    if config.condition_marker is not None:
        raise ExportError(
            "train.model.condition_embedding (a learned vector per header condition) has no counterpart in "
            "GPT-2, GPT-NeoX or Llama; export a model trained without it"
        )
    if config.qk_norm:
        raise ExportError(
            "train.model.qk_norm (RMS-normalised queries and keys) has no counterpart in GPT-2, GPT-NeoX or "
            "Llama as transformers implements them; export a model trained without it"
        )


def gpt2_model(config: GPTConfig, state: Mapping[str, torch.Tensor]) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    c = config.n_embd
    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=c,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=4 * c,
        activation_function="relu2" if config.activation == "relu2" else "gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=config.tie_weights,
        bos_token_id=None,
        eos_token_id=None,
    )
    mapped: dict[str, torch.Tensor] = {
        "transformer.wte.weight": state["wte.weight"],
        "transformer.wpe.weight": state["wpe.weight"],
        "transformer.ln_f.weight": state["ln_f.weight"],
        "transformer.ln_f.bias": _zeros_if_none(state, "ln_f.bias", c),
        "lm_head.weight": head_weight(config, state),
    }
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for norm in ("ln_1", "ln_2"):
            mapped[f"{theirs}{norm}.weight"] = state[f"{ours}{norm}.weight"]
            mapped[f"{theirs}{norm}.bias"] = _zeros_if_none(state, f"{ours}{norm}.bias", c)
        # GPT-2's Conv1D stores (in, out): the transpose of nn.Linear's (out, in).
        for mine, hers, width in (
            ("attn.qkv", "attn.c_attn", 3 * c),
            ("attn.proj", "attn.c_proj", c),
            ("mlp.fc", "mlp.c_fc", 4 * c),
            ("mlp.proj", "mlp.c_proj", c),
        ):
            mapped[f"{theirs}{hers}.weight"] = state[f"{ours}{mine}.weight"].t().contiguous()
            mapped[f"{theirs}{hers}.bias"] = _zeros_if_none(state, f"{ours}{mine}.bias", width)
    model: Any = GPT2LMHeadModel(hf_config)
    _load_exactly(model, mapped)
    return model.eval()


def _interleave_heads(tensor: torch.Tensor, n_head: int) -> torch.Tensor:
    """[q heads | k heads | v heads] along dim 0 -> per head [q | k | v] (GPT-NeoX's fused layout)."""
    rest = tensor.shape[1:]
    q, k, v = tensor.chunk(3, dim=0)
    per_head = [t.reshape(n_head, -1, *rest) for t in (q, k, v)]
    return torch.cat(per_head, dim=1).reshape(-1, *rest).contiguous()


def neox_model(config: GPTConfig, state: Mapping[str, torch.Tensor]) -> Any:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    c = config.n_embd
    hf_config = GPTNeoXConfig(
        vocab_size=config.vocab_size,
        hidden_size=c,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        intermediate_size=4 * c,
        hidden_act="relu2" if config.activation == "relu2" else "gelu",
        max_position_embeddings=config.block_size,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_base, "partial_rotary_factor": 1.0},
        use_parallel_residual=False,
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        tie_word_embeddings=config.tie_weights,
        bos_token_id=None,
        eos_token_id=None,
    )
    mapped: dict[str, torch.Tensor] = {
        "gpt_neox.embed_in.weight": state["wte.weight"],
        "gpt_neox.final_layer_norm.weight": state["ln_f.weight"],
        "gpt_neox.final_layer_norm.bias": _zeros_if_none(state, "ln_f.bias", c),
        "lm_head.weight": head_weight(config, state),
    }
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"gpt_neox.layers.{i}."
        for mine, hers in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            mapped[f"{theirs}{hers}.weight"] = state[f"{ours}{mine}.weight"]
            mapped[f"{theirs}{hers}.bias"] = _zeros_if_none(state, f"{ours}{mine}.bias", c)
        qkv_bias = _zeros_if_none(state, f"{ours}attn.qkv.bias", 3 * c)
        mapped[f"{theirs}attention.query_key_value.weight"] = _interleave_heads(
            state[f"{ours}attn.qkv.weight"], config.n_head
        )
        mapped[f"{theirs}attention.query_key_value.bias"] = _interleave_heads(qkv_bias, config.n_head)
        for mine, hers, width in (
            ("attn.proj", "attention.dense", c),
            ("mlp.fc", "mlp.dense_h_to_4h", 4 * c),
            ("mlp.proj", "mlp.dense_4h_to_h", c),
        ):
            mapped[f"{theirs}{hers}.weight"] = state[f"{ours}{mine}.weight"]
            mapped[f"{theirs}{hers}.bias"] = _zeros_if_none(state, f"{ours}{mine}.bias", width)
    model: Any = GPTNeoXForCausalLM(hf_config)
    _load_exactly(model, mapped)
    return model.eval()


def _load_exactly(model: torch.nn.Module, mapped: Mapping[str, torch.Tensor]) -> None:
    """Every parameter of the target comes from the checkpoint and every checkpoint tensor is used."""
    result = model.load_state_dict(dict(mapped), strict=False)
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    missing = [name for name in result.missing_keys if name in parameters]
    if missing or result.unexpected_keys:
        raise ExportError(
            f"weights do not map onto {type(model).__name__}: missing {missing}, unused {result.unexpected_keys}"
        )


def to_transformers(config: GPTConfig, state: Mapping[str, torch.Tensor]) -> Any:
    check_exportable(config)
    if config.rotary:
        return neox_model(config, state)
    return gpt2_model(config, state)
