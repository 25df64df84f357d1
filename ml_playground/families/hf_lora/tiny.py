"""A tiny real causal LM (Qwen2 architecture, random weights) with a tokenizer trained on your text.

For trying the fine-tuning path end to end on a CPU in seconds, and for the tests: a real
``Qwen2ForCausalLM`` and a real ``PreTrainedTokenizerFast`` saved with ``save_pretrained``, loadable
by ``AutoModelForCausalLM`` / ``AutoTokenizer`` like any model folder. Like Qwen's, its pad token
is its end-of-sequence token, and it has a chat template.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}" + IM_START + "{{ message['role'] }}\n{{ message['content'] }}" + IM_END + "\n"
    "{% endfor %}{% if add_generation_prompt %}" + IM_START + "assistant\n{% endif %}"
)


def build_tiny_causal_lm(
    out_dir: Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    architecture: str = "qwen2",
) -> Path:
    """``architecture``: ``qwen2`` (q/k/v biases) or ``llama`` (SmolLM2's shape)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from ml_playground.core.hub import quiet_transformers

    quiet_transformers()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS)  # type: ignore[no-untyped-call]
    tokenizer.chat_template = CHAT_TEMPLATE
    shape: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
        "eos_token_id": bpe.token_to_id(EOS),
        "pad_token_id": bpe.token_to_id(EOS),
        "bos_token_id": None,
    }
    torch.manual_seed(seed)
    model = (
        LlamaForCausalLM(LlamaConfig(**shape)) if architecture == "llama" else Qwen2ForCausalLM(Qwen2Config(**shape))
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
