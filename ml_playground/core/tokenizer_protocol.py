"""What the rest of the package needs from a tokenizer; implementations live in ``core/tokenizer.py``.

Everything the package asks of a tokenizer is a method here (byte lengths for bits per byte, special
tokens, end of sequence, chat template, what ends a generated text, export data), so adding a
tokenizer means one class, not a branch in every module that uses one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from tokenizers import Tokenizer as Backend


@runtime_checkable
class Tokenizer(Protocol):
    @property
    def kind(self) -> str:
        """``char``, ``bpe``, ``tiktoken`` or ``hf``: the key ``load_tokenizer`` dispatches on."""
        ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_array(self, text: str) -> npt.NDArray[np.int64]:
        """The same ids as ``encode``, as an array; implementations make this the fast path."""
        ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` of each text (in parallel where the implementation can)."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, directory: Path) -> None:
        """Write everything needed to rebuild this tokenizer into ``directory``."""
        ...

    def token_id(self, token: str) -> int | None:
        """The id of a whole token (for example a special token such as ``<|end|>``), or None."""
        ...

    @property
    def eos_token_id(self) -> int | None:
        """The token that separates packed records (a pretrained base's EOS); None where records are not packed."""
        ...

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template the tokenizer carries, or None."""
        ...

    def stop_texts(self) -> list[str]:
        """Token texts that end a generated text (an exported model's stop strings)."""
        ...

    def token_byte_lengths(self) -> npt.NDArray[np.int64]:
        """UTF-8 bytes each id stands for, ``(vocab_size,)``: the denominator of bits per byte; 0 for specials."""
        ...

    def characters_outside(self, text: str) -> set[str]:
        """Characters of ``text`` this vocabulary has no token for (empty for byte-level vocabularies)."""
        ...

    @property
    def unknown_symbol(self) -> str | None:
        """What ``characters_outside`` encode as; None: they cannot be encoded."""
        ...

    def to_backend(self) -> Backend:
        """The same tokenization as a Hugging Face ``tokenizers`` object: what the HF and GGUF exports write."""
        ...
