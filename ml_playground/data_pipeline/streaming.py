"""Plain-text preparation in bounded memory: the files are read in chunks, three times.

1. count the characters (where the 90/10 split falls);
2. build the vocabulary: character counts, or BPE trained on the chunks of the training part;
3. encode chunk by chunk and append the ids to ``train.bin`` / ``val.bin``.

Memory is a few chunks plus the tokenizer, whatever the corpus size. The result is identical to
encoding the whole text at once: chunks end after a newline that has a non-space character on
both sides, where neither the character pipeline nor the byte-level pre-tokenizers of BPE and
tiktoken (the GPT-2 split pattern) can join tokens across the cut, and Unicode normalisation
never spans a newline.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.sources.normalize import normalize_text
from ml_playground.data_pipeline.sources.records import SniffedFile

CHUNK_BYTES = 8 << 20


# Greedy ".*" backtracks from the end, so the match ends at the LAST such newline. The text is not
# normalised yet, so a Windows line end counts as one newline.
_LAST_SAFE_NEWLINE = re.compile(r".*\S\r?\n(?=\S)", re.S)


def safe_cut(text: str) -> int:
    """Index just after the last newline (LF or CRLF) with a non-space character on each side; 0 when none.

    Memory is bounded by the longest stretch of text without such a newline (in prose, a few lines)."""
    match = _LAST_SAFE_NEWLINE.match(text)
    return match.end() if match else 0


def iter_chunks(files: list[SniffedFile], chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The normalised text of all files, joined by newlines, in pieces cut only where ``safe_cut`` allows."""
    carry = ""
    for number, source in enumerate(files):
        if number:
            carry += "\n"
        decoder = codecs.getincrementaldecoder(source.encoding)(errors="strict")
        block_start = offset = 0
        try:
            with source.path.open("rb") as handle:
                for block in iter(lambda: handle.read(chunk_bytes), b""):
                    block_start, offset = offset, offset + len(block)
                    carry += decoder.decode(block)
                    cut = safe_cut(carry)
                    if cut:
                        yield normalize_text(carry[:cut])
                        carry = carry[cut:]
                carry += decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"not valid {source.encoding} at byte {max(0, block_start + exc.start)} "
                "(set prepare.encoding if the file uses another encoding)",
                path=source.path,
            ) from None
    if carry:
        yield normalize_text(carry)


@dataclass(frozen=True)
class Split:
    """Which part of each chunk is training text and which is validation text."""

    split_at: int

    def parts(self, chunks: Iterator[str]) -> Iterator[tuple[str, str]]:
        """(train part, val part) of each chunk."""
        position = 0
        for chunk in chunks:
            start, position = position, position + len(chunk)
            cut = min(max(self.split_at - start, 0), len(chunk))
            yield chunk[:cut], chunk[cut:]


def count_characters(files: list[SniffedFile]) -> int:
    return sum(len(chunk) for chunk in iter_chunks(files))


def char_counts(chunks: Iterator[str]) -> npt.NDArray[np.int64]:
    """Occurrences of every code point in the chunks."""
    counts = np.zeros(0x110000, dtype=np.int64)
    for chunk in chunks:
        chunk_counts = np.bincount(np.frombuffer(chunk.encode("utf-32-le"), dtype=np.uint32))
        counts[: len(chunk_counts)] += chunk_counts
    return counts


def token_dtype(vocab_size: int) -> type[np.unsignedinteger[Any]]:
    """The smallest unsigned type that holds every id: uint16, or uint32 for large vocabularies."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


class TokenFileWriter:
    """Appends ids to an open temporary file; the caller renames it into place when all is written."""

    def __init__(self, handle: BinaryIO, dtype: type[np.unsignedinteger[Any]]) -> None:
        self.handle = handle
        self.dtype = dtype
        self.count = 0

    def write(self, ids: npt.NDArray[np.int64]) -> None:
        self.handle.write(ids.astype(self.dtype).tobytes())
        self.count += len(ids)


def encode_into(
    chunks: Iterator[str],
    split: Split,
    encode: Callable[[str], npt.NDArray[np.int64]],
    train: TokenFileWriter,
    val: TokenFileWriter,
) -> None:
    for train_part, val_part in split.parts(chunks):
        if train_part:
            train.write(encode(train_part))
        if val_part:
            val.write(encode(val_part))
