"""How many bytes of UTF-8 text each token id stands for: the denominator of bits per byte.

Bits per byte = (sum of the targets' losses in bits) / (UTF-8 bytes those targets decode to).
Unlike a loss per token it does not depend on the tokenizer, so a character model, a GPT-2 BPE
model and a 49k-vocabulary model can be compared on the same text. Special tokens (header
markers, ``<|end|>``, EOS) stand for no text: their length is 0, and bits per byte leaves their
targets out of the sum (as nanochat does). A character model's unknown symbol counts as the three
bytes of U+FFFD.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt

from ml_playground.core.tokenizer import BpeTokenizer, CharTokenizer, PretrainedTokenizer, TiktokenTokenizer
from ml_playground.core.tokenizer_protocol import Tokenizer


@cache
def byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): one printable character per byte value, character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def token_byte_lengths(tokenizer: Tokenizer) -> npt.NDArray[np.int64]:
    """Bytes per id, ``(vocab_size,)``; 0 for special tokens."""
    lengths = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    if isinstance(tokenizer, CharTokenizer):
        for index, char in enumerate(tokenizer.chars):
            lengths[index] = len(char.encode("utf-8"))
    elif isinstance(tokenizer, BpeTokenizer):
        special = set(tokenizer.backend.get_added_tokens_decoder())
        for token, index in tokenizer.backend.get_vocab(with_added_tokens=False).items():
            if index not in special:
                lengths[index] = len(token)  # one alphabet character per byte
    elif isinstance(tokenizer, TiktokenTokenizer):
        encoding = tokenizer.encoding
        special = {encoding.encode_single_token(token) for token in encoding.special_tokens_set}
        for index in range(min(encoding.n_vocab, len(lengths))):
            if index not in special:
                try:
                    lengths[index] = len(encoding.decode_single_token_bytes(index))
                except KeyError:  # a hole in the ranks
                    lengths[index] = 0
    elif isinstance(tokenizer, PretrainedTokenizer):
        lengths = _pretrained_lengths(tokenizer, lengths)
    else:  # any other tokenizer: decode each id on its own
        for index in range(len(lengths)):
            lengths[index] = len(tokenizer.decode([index]).encode("utf-8"))
    return lengths


def _pretrained_lengths(tokenizer: PretrainedTokenizer, lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Byte-level vocabularies by their alphabet; others (SentencePiece) by decoding each id."""
    hf = tokenizer.tokenizer
    alphabet = byte_level_alphabet()
    special = set(hf.all_special_ids)
    for index, token in enumerate(hf.convert_ids_to_tokens(list(range(len(lengths))))):
        if index in special or token is None:
            continue
        if all(char in alphabet for char in token):
            lengths[index] = len(token)
        else:
            lengths[index] = len(tokenizer.decode([index]).encode("utf-8"))
    return lengths
