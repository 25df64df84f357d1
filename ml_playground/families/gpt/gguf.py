"""A from-scratch GPT checkpoint as a GGUF file (llama.cpp's ``gpt2`` architecture), tokenizer embedded.

Written with the ``gguf`` package that the llama.cpp project maintains. Weights keep PyTorch's
(out, in) layout, which is what llama.cpp expects for ``gpt2``; missing biases are written as
zeros. The tokenizer is stored as llama.cpp's byte-level BPE (``export/gguf_vocab.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.export.gguf_vocab import gguf_vocab
from ml_playground.export.request import ExportError, GgufType
from ml_playground.families.gpt.hf import head_weight
from ml_playground.families.gpt.model import GPTConfig

# Tensors that stay float32 in every file type (llama.cpp's own converter keeps norms and biases in f32).
_ALWAYS_F32 = ("_norm.", ".bias")


def _tensor(name: str, value: torch.Tensor, kind: GgufType) -> tuple[np.ndarray, object | None]:
    from gguf import GGMLQuantizationType, quants

    data = value.detach().float().cpu().numpy()
    if kind == "f32" or data.ndim < 2 or any(part in name for part in _ALWAYS_F32):
        return data.astype(np.float32), None
    if kind == "f16":
        return data.astype(np.float16), None
    if data.shape[-1] % 32:  # Q8_0 blocks hold 32 values along a row
        return data.astype(np.float16), None
    return quants.quantize(data, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0


def gguf_tensors(config: GPTConfig, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    c = config.n_embd

    def get(name: str, width: int) -> torch.Tensor:
        return state[name] if name in state else torch.zeros(width)

    tensors = {
        "token_embd.weight": state["wte.weight"],
        "position_embd.weight": state["wpe.weight"],
        "output_norm.weight": state["ln_f.weight"],
        "output_norm.bias": get("ln_f.bias", c),
        "output.weight": head_weight(config, state),
    }
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"blk.{i}."
        for mine, hers, width in (
            ("ln_1", "attn_norm", c),
            ("attn.qkv", "attn_qkv", 3 * c),
            ("attn.proj", "attn_output", c),
            ("ln_2", "ffn_norm", c),
            ("mlp.fc", "ffn_up", 4 * c),
            ("mlp.proj", "ffn_down", c),
        ):
            tensors[f"{theirs}{hers}.weight"] = state[f"{ours}{mine}.weight"]
            tensors[f"{theirs}{hers}.bias"] = get(f"{ours}{mine}.bias", width)
    return tensors


def check_gguf_exportable(config: GPTConfig) -> None:
    for option, value, why in (
        ("train.model.rotary", config.rotary, "llama.cpp's gpt2 architecture has learned positions"),
        ("train.model.qk_norm", config.qk_norm, "llama.cpp's gpt2 architecture has no QK-norm"),
        ("train.model.activation", config.activation != "gelu", "llama.cpp's gpt2 architecture uses GELU"),
        ("train.model.condition_embedding", config.condition_marker is not None, "llama.cpp has no such input"),
    ):
        if value:
            raise ExportError(f"{option} cannot be expressed in GGUF ({why}); export --format hf instead")


def write_gguf(
    path: Path,
    config: GPTConfig,
    state: Mapping[str, torch.Tensor],
    tokenizer: Tokenizer,
    kind: GgufType,
    name: str,
) -> None:
    from gguf import GGUFWriter, LlamaFileType

    check_gguf_exportable(config)
    vocab = gguf_vocab(tokenizer)
    if len(vocab.tokens) != config.vocab_size:
        raise ExportError(f"the tokenizer has {len(vocab.tokens)} tokens, the model {config.vocab_size} embeddings")
    writer = GGUFWriter(str(path), "gpt2")
    writer.add_name(name)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(1e-5)
    file_type = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_type[kind])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    writer.add_add_bos_token(False)
    if vocab.eos_id is not None:
        writer.add_eos_token_id(vocab.eos_id)
    for tensor_name, value in gguf_tensors(config, state).items():
        data, raw_dtype = _tensor(tensor_name, value, kind)
        if raw_dtype is None:
            writer.add_tensor(tensor_name, data)
        else:
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)  # type: ignore[arg-type]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
