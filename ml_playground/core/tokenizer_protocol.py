"""What the rest of the package needs from a tokenizer; implementations live in ``core/tokenizer.py``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


@runtime_checkable
class Tokenizer(Protocol):
    @property
    def kind(self) -> str:
        """``char``, ``bpe`` or ``tiktoken``: the key ``load_tokenizer`` dispatches on."""
        ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_array(self, text: str) -> npt.NDArray[np.int64]:
        """The same ids as ``encode``, as an array; implementations make this the fast path."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, directory: Path) -> None:
        """Write everything needed to rebuild this tokenizer into ``directory``."""
        ...
