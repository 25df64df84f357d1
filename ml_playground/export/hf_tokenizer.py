"""Our tokenizers as Hugging Face fast tokenizers that encode and decode exactly like ours.

- char: a ``WordLevel`` model over the characters, a pre-tokenizer that isolates every character
  and a ``Fuse`` decoder (no spaces added between tokens);
- bpe: it already is a ``tokenizers`` byte-level BPE;
- tiktoken: converted from its rank file with ``transformers``' ``TikTokenConverter`` (byte-level
  BPE with tiktoken's split pattern).
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from ml_playground.core.errors import UserError
from ml_playground.core.tokenizer import BpeTokenizer, CharTokenizer, TiktokenTokenizer
from ml_playground.core.tokenizer_protocol import Tokenizer


def char_backend(tokenizer: CharTokenizer) -> Backend:
    vocab = {char: index for index, char in enumerate(tokenizer.chars)}
    backend = Backend(models.WordLevel(vocab=vocab, unk_token=tokenizer.unknown))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return backend


def tiktoken_backend(tokenizer: TiktokenTokenizer) -> Backend:
    from transformers.convert_slow_tokenizer import TikTokenConverter

    encoding = tokenizer.encoding
    with tempfile.TemporaryDirectory() as tmp:
        ranks = Path(tmp) / "ranks.tiktoken"
        lines = (f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in encoding._mergeable_ranks.items())
        ranks.write_text("".join(lines), encoding="ascii")
        specials = sorted(encoding._special_tokens, key=encoding._special_tokens.__getitem__)
        converter = TikTokenConverter(  # type: ignore[no-untyped-call]
            vocab_file=str(ranks), pattern=encoding._pat_str, extra_special_tokens=specials
        )
        converted: Backend = converter.converted()
    return converted


def hf_backend(tokenizer: Tokenizer) -> Backend:
    if isinstance(tokenizer, CharTokenizer):
        return char_backend(tokenizer)
    if isinstance(tokenizer, BpeTokenizer):
        return tokenizer.backend
    if isinstance(tokenizer, TiktokenTokenizer):
        return tiktoken_backend(tokenizer)
    raise UserError(f"no Hugging Face export for a {tokenizer.kind} tokenizer")


def to_pretrained_tokenizer(tokenizer: Tokenizer, eos_token: str | None = None) -> Any:
    """A ``PreTrainedTokenizerFast`` around our tokenizer's exact behaviour."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=hf_backend(tokenizer), clean_up_tokenization_spaces=False
    )
    if eos_token is not None:
        fast.eos_token = eos_token
    return fast
