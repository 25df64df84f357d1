"""Which chat template a fine-tune answers through, and the tokens that end its turns.

A run records how it was trained (``text_format`` in its checkpoint: chat with the template, or plain
text). That record is the one source of truth: the tokenizer loaded for inference or export gets the
recorded template, or none for a plain-text run, so ``chat``, ``serve``, the GGUF file's
``tokenizer.chat_template`` and the Ollama Modelfile all follow what the model saw. The end-of-turn
tokens are found the way the training data found them (``ChatEncoder`` on a probe conversation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ml_playground.core.errors import ConfigError
from ml_playground.data_pipeline.chat_encoding import ChatEncoder

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PROBE = ({"role": "user", "content": "Frage?"}, {"role": "assistant", "content": "Antwort."})


def apply_text_format(tokenizer: PreTrainedTokenizerBase, record: Mapping[str, Any] | None) -> None:
    """The recorded template becomes the tokenizer's; a plain-text run's tokenizer has none (None: unchanged)."""
    if record is None:
        return
    template = record.get("template") if record.get("kind") == "chat" else None
    tokenizer.chat_template = template if isinstance(template, str) else None


def end_of_turn(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The special tokens the tokenizer's chat template puts after an assistant turn ([] without a template)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return []
    encoder = ChatEncoder(tokenizer, template)
    try:
        encoder.pieces(PROBE)
    except ConfigError:
        return []
    return sorted(encoder.end_of_turn)


def stop_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """End of sequence and end of turn, as ids."""
    ids = {tokenizer.eos_token_id} if isinstance(tokenizer.eos_token_id, int) else set()
    for token in end_of_turn(tokenizer):
        found = tokenizer.convert_tokens_to_ids(token)
        if isinstance(found, int):
            ids.add(found)
    return frozenset(ids)
