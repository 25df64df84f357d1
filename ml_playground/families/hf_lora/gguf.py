"""A Hugging Face llama or qwen2 causal LM (a merged LoRA fine-tune) as a GGUF file, tokenizer and chat template in it.

Our own writer on the ``gguf`` package, for the architectures the fine-tuning path supports. Tensor
names and layouts follow llama.cpp's converter: for ``llama`` the query and key rows are reordered
from Hugging Face's rotary layout (first half, second half) to llama.cpp's (interleaved pairs);
``qwen2`` keeps them and adds the q/k/v biases. Norms stay float32 in every file type. The
tokenizer is written as llama.cpp's byte-level BPE with its pre-tokenizer name, its special tokens
and its chat template, so that llama.cpp tokenizes and stops as ``transformers`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ml_playground.core.gguf_import import SOURCE_FILE
from ml_playground.export.gguf_vocab import GgufVocab, bpe_vocab_from_backend
from ml_playground.export.request import ExportError, GgufType

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SUPPORTED = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
# In q8_0 files the output projection stays f16 (with tied embeddings that is token_embd), as llama.cpp's
# quantize keeps the output layer above the rest: measured on the SmolLM2 fine-tune, top-1 agreement with
# the float32 model over 256 validation positions was 0.941 with it quantized too.
OUTPUT_TENSORS = ("output.weight", "token_embd.weight")
PRE_TOKENIZERS = {"llama": "smollm", "qwen2": "qwen2"}  # llama.cpp's names for their split rules


@dataclass(frozen=True)
class Specials:
    eos_id: int | None
    bos_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None


def llama_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face's rotary halves -> llama.cpp's interleaved pairs, per head (rows of q or k)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def architecture(config: Any) -> str:
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if name in SUPPORTED:
            return SUPPORTED[name]
    raise ExportError(
        f"GGUF export supports {', '.join(sorted(SUPPORTED))}; this model is {', '.join(names) or 'unknown'}"
    )


def gguf_tensors(arch: str, config: Any, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    heads, kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads or config.num_attention_heads)
    tensors = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
    }
    if not config.tie_word_embeddings:
        tensors["output.weight"] = state["lm_head.weight"]
    for i in range(int(config.num_hidden_layers)):
        ours, theirs = f"model.layers.{i}.", f"blk.{i}."
        q, k = state[f"{ours}self_attn.q_proj.weight"], state[f"{ours}self_attn.k_proj.weight"]
        if arch == "llama":
            q, k = llama_permute(q, heads), llama_permute(k, kv_heads)
        tensors[f"{theirs}attn_norm.weight"] = state[f"{ours}input_layernorm.weight"]
        tensors[f"{theirs}attn_q.weight"] = q
        tensors[f"{theirs}attn_k.weight"] = k
        tensors[f"{theirs}attn_v.weight"] = state[f"{ours}self_attn.v_proj.weight"]
        tensors[f"{theirs}attn_output.weight"] = state[f"{ours}self_attn.o_proj.weight"]
        for proj in ("q", "k", "v"):
            bias = state.get(f"{ours}self_attn.{proj}_proj.bias")
            if bias is not None:
                if arch == "llama" and proj in ("q", "k"):
                    bias = llama_permute(bias, heads if proj == "q" else kv_heads)
                tensors[f"{theirs}attn_{proj}.bias"] = bias
        tensors[f"{theirs}ffn_norm.weight"] = state[f"{ours}post_attention_layernorm.weight"]
        tensors[f"{theirs}ffn_gate.weight"] = state[f"{ours}mlp.gate_proj.weight"]
        tensors[f"{theirs}ffn_up.weight"] = state[f"{ours}mlp.up_proj.weight"]
        tensors[f"{theirs}ffn_down.weight"] = state[f"{ours}mlp.down_proj.weight"]
    return tensors


def _array(name: str, value: torch.Tensor, kind: GgufType) -> tuple[np.ndarray, Any]:
    from gguf import GGMLQuantizationType, quants

    data = value.detach().float().cpu().numpy()
    if kind == "f32" or data.ndim < 2 or "_norm." in name:
        return data.astype(np.float32), None
    if kind == "f16" or data.shape[-1] % 32 or name in OUTPUT_TENSORS:  # Q8_0 blocks hold 32 values along a row
        return data.astype(np.float16), None
    return quants.quantize(data, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0


def backend_json(tokenizer: PreTrainedTokenizerBase) -> str:
    """The ``tokenizers`` definition behind a fast tokenizer, as JSON."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError("GGUF export needs a fast (tokenizers) tokenizer")
    return str(backend.to_str())


def tokenizer_vocab(tokenizer: PreTrainedTokenizerBase) -> GgufVocab:
    spec = backend_json(tokenizer)
    if '"type":"BPE"' not in spec.replace(" ", ""):
        raise ExportError("GGUF export supports byte-level BPE tokenizers (as SmolLM2's and Qwen2's)")
    return bpe_vocab_from_backend(spec)


def specials(tokenizer: PreTrainedTokenizerBase) -> Specials:
    def as_id(value: Any) -> int | None:
        return int(value) if value is not None else None

    return Specials(
        eos_id=as_id(tokenizer.eos_token_id),
        bos_id=as_id(tokenizer.bos_token_id),
        pad_id=as_id(tokenizer.pad_token_id),
        add_bos=bool(getattr(tokenizer, "add_bos_token", False)),
        chat_template=getattr(tokenizer, "chat_template", None) or None,
    )


def pre_tokenizer_name(tokenizer: PreTrainedTokenizerBase, arch: str, folder: Path | None = None) -> str:
    """llama.cpp's name for how text is split before BPE: the source GGUF's own, GPT-2's, or the architecture's."""
    import json

    if folder is not None and (folder / SOURCE_FILE).is_file():
        pre = json.loads((folder / SOURCE_FILE).read_text("utf-8")).get("tokenizer.ggml.pre")
        if isinstance(pre, str) and pre:
            return pre
    spec = json.loads(backend_json(tokenizer)).get("pre_tokenizer") or {}
    if spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt-2"
    return PRE_TOKENIZERS[arch]


def write_hf_gguf(
    path: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    kind: GgufType,
    name: str,
    pre: str | None = None,
) -> None:
    """``model``: a ``transformers`` llama/qwen2 causal LM; ``pre``: llama.cpp's pre-tokenizer name."""
    from gguf import GGUFWriter, LlamaFileType

    config: Any = model.config  # each architecture has its own fields
    arch = architecture(config)
    vocab = tokenizer_vocab(tokenizer)
    embeddings = model.get_input_embeddings()
    rows = int(embeddings.weight.shape[0]) if isinstance(embeddings, torch.nn.Embedding) else len(tokenizer)
    if len(vocab.tokens) > rows:
        raise ExportError(f"the tokenizer has {len(vocab.tokens)} tokens, the model {rows} embeddings")
    tokens = vocab.tokens + [f"[PAD{i}]" for i in range(len(vocab.tokens), rows)]
    types = vocab.types + [5] * (rows - len(vocab.tokens))
    special = specials(tokenizer)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    writer = GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.num_key_value_heads or heads))
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if arch == "llama":
        writer.add_vocab_size(rows)
    file_type = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_type[kind])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre or pre_tokenizer_name(tokenizer, arch))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(vocab.merges)
    if special.eos_id is not None:
        writer.add_eos_token_id(special.eos_id)
    if special.bos_id is not None:
        writer.add_bos_token_id(special.bos_id)
    if special.pad_id is not None:
        writer.add_pad_token_id(special.pad_id)
    writer.add_add_bos_token(special.add_bos)
    if special.chat_template is not None:
        writer.add_chat_template(special.chat_template)
    state = dict(model.state_dict())
    for tensor_name, value in gguf_tensors(arch, config, state).items():
        data, raw_dtype = _array(tensor_name, value, kind)
        if raw_dtype is None:
            writer.add_tensor(tensor_name, data)
        else:
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _rope_theta(config: Any) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        parameters = getattr(config, "rope_parameters", None) or {}
        theta = parameters.get("rope_theta", 10000.0)
    return float(theta)


def read_back(path: Path) -> dict[str, Any]:
    """What llama.cpp will read: the special tokens, the chat template and the token texts."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def scalar(key: str) -> Any:
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    return {
        "eos_id": scalar("tokenizer.ggml.eos_token_id"),
        "chat_template": scalar("tokenizer.chat_template"),
        "tokens": scalar("tokenizer.ggml.tokens"),
    }
