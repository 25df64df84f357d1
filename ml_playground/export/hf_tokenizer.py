"""Our tokenizers as Hugging Face fast tokenizers that encode and decode exactly like ours.

- char: a ``WordLevel`` model over the characters, a pre-tokenizer that isolates every character
  and a ``Fuse`` decoder (no spaces added between tokens);
- bpe: it already is a ``tokenizers`` byte-level BPE;
- tiktoken: converted from its rank file with ``transformers``' ``TikTokenConverter`` (byte-level
  BPE with tiktoken's split pattern).
"""

from __future__ import annotations

from typing import Any

from ml_playground.core.tokenizer_protocol import Tokenizer


def to_pretrained_tokenizer(tokenizer: Tokenizer, eos_token: str | None = None) -> Any:
    """A ``PreTrainedTokenizerFast`` around our tokenizer's exact behaviour."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer.to_backend(), clean_up_tokenization_spaces=False
    )
    if eos_token is not None:
        fast.eos_token = eos_token
    return fast
