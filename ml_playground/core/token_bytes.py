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
