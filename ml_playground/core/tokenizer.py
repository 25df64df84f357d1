"""Tokenizers: character-level, byte-level BPE trained locally (``tokenizers``), and tiktoken encodings.

Each saves itself as ``tokenizer.json`` (our small spec) plus its own files in a folder, and
``load_tokenizer`` rebuilds it from that folder alone: datasets and checkpoints carry one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tokenizers import Tokenizer as HfTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from ml_playground.core.atomic import atomic_write_text
from ml_playground.core.errors import DataError, UserError
from ml_playground.core.tokenizer_protocol import Tokenizer

SPEC_FILE = "tokenizer.json"
BPE_FILE = "bpe.json"
TIKTOKEN_RANKS_FILE = "ranks.tiktoken"

# tiktoken's own split pattern for the GPT-2 family (r50k_base); a local rank file needs it.
_GPT2_FAMILY = {"gpt2", "r50k_base"}


class CharTokenizer:
    """One id per character, vocabulary sorted so that the ids are stable for a given corpus."""

    def __init__(self, chars: Sequence[str]) -> None:
        self.chars = list(chars)
        self._index = {ch: i for i, ch in enumerate(self.chars)}
        self._table = np.full(max((ord(c) for c in self.chars), default=0) + 1, -1, dtype=np.int64)
        for i, ch in enumerate(self.chars):
            self._table[ord(ch)] = i

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        counts = np.bincount(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))
        return cls([chr(int(code)) for code in np.flatnonzero(counts)])

    @property
    def kind(self) -> str:
        return "char"

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.encode_array(text)]

    def encode_array(self, text: str) -> npt.NDArray[np.int64]:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        if codes.size and codes.max() >= self._table.size:
            self._raise_unknown(text)
        ids = self._table[codes]
        if ids.size and ids.min() < 0:
            self._raise_unknown(text)
        return ids

    def _raise_unknown(self, text: str) -> None:
        unknown = sorted(set(text) - set(self._index))
        raise UserError(f"characters not in the vocabulary: {''.join(unknown)!r}")

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, directory: Path) -> None:
        atomic_write_text(directory / SPEC_FILE, json.dumps({"kind": "char", "chars": self.chars}, ensure_ascii=False))


class BpeTokenizer:
    """Byte-level BPE trained on the corpus with Hugging Face ``tokenizers``: any text round-trips."""

    def __init__(self, tokenizer: HfTokenizer) -> None:
        self._tokenizer = tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BpeTokenizer:
        tokenizer = HfTokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer)

    @property
    def kind(self) -> str:
        return "bpe"

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text).ids)

    def encode_array(self, text: str) -> npt.NDArray[np.int64]:
        """Large texts are cut where the pre-tokenizer cuts anyway and encoded in parallel batches."""
        pieces = split_for_batch_encoding(text)
        if len(pieces) == 1:
            return np.asarray(self._tokenizer.encode(text).ids, dtype=np.int64)
        encodings = self._tokenizer.encode_batch(pieces)
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=False))

    def save(self, directory: Path) -> None:
        atomic_write_text(directory / BPE_FILE, self._tokenizer.to_str())
        atomic_write_text(directory / SPEC_FILE, json.dumps({"kind": "bpe", "file": BPE_FILE}))


def split_for_batch_encoding(text: str, piece_chars: int = 1 << 16) -> list[str]:
    """Cut after a newline that is followed by a non-space character.

    Byte-level pre-tokenizers never merge across that point (the whitespace run ends at the
    newline and the next piece starts without a leading space), so encoding the pieces separately
    gives exactly the ids of encoding the whole text.
    """
    pieces = []
    start = 0
    while len(text) - start > piece_chars:
        newline = text.find("\n", start + piece_chars - 1)
        while newline != -1 and newline + 2 < len(text) and text[newline + 1].isspace():
            newline = text.find("\n", newline + 1)
        if newline == -1 or newline + 2 >= len(text):
            break
        cut = newline + 1
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


class TiktokenTokenizer:
    """A tiktoken encoding, by name (fetched once into a cache) or from a local rank file."""

    def __init__(self, encoding: tiktoken.Encoding, name: str, ranks_file: Path | None) -> None:
        self._encoding = encoding
        self.name = name
        self._ranks_file = ranks_file

    @classmethod
    def from_file(cls, name: str, ranks_file: Path) -> TiktokenTokenizer:
        if name not in _GPT2_FAMILY:
            raise UserError(f"a local rank file is supported for {sorted(_GPT2_FAMILY)}, not {name!r}")
        if not ranks_file.is_file():
            raise DataError("tiktoken rank file not found", path=ranks_file)
        try:
            ranks = load_tiktoken_bpe(str(ranks_file))
        except Exception as exc:  # tiktoken raises plain ValueError/binascii errors on bad files
            raise DataError(f"not a tiktoken rank file ({exc})", path=ranks_file) from None
        from tiktoken_ext.openai_public import r50k_pat_str

        encoding = tiktoken.Encoding(
            name=f"{name}-local",
            pat_str=r50k_pat_str,
            mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": len(ranks)},
        )
        return cls(encoding, name, ranks_file)

    @classmethod
    def by_name(
        cls,
        name: str,
        cache_dir: Path,
        get_encoding: Callable[[str], tiktoken.Encoding] = tiktoken.get_encoding,
    ) -> TiktokenTokenizer:
        """``get_encoding`` is tiktoken's own loader; it fetches into ``cache_dir`` on first use."""
        cache = cache_dir.expanduser() / "tiktoken"
        cache.mkdir(parents=True, exist_ok=True)
        try:
            with _env("TIKTOKEN_CACHE_DIR", str(cache)):
                encoding = get_encoding(name)
        except ValueError as exc:
            raise UserError(f"unknown tiktoken encoding {name!r} ({exc})", key="prepare.tiktoken_encoding") from None
        except Exception as exc:
            raise DataError(
                f"could not fetch tiktoken encoding {name!r} into {cache} ({type(exc).__name__}); "
                "run once online, or set prepare.tiktoken_file to a local rank file "
                "(for gpt2: whisper/assets/gpt2.tiktoken from the openai-whisper sdist)",
            ) from None
        return cls(encoding, name, None)

    @property
    def kind(self) -> str:
        return "tiktoken"

    @property
    def vocab_size(self) -> int:
        return int(self._encoding.n_vocab)

    def encode(self, text: str) -> list[int]:
        return list(self._encoding.encode_ordinary(text))

    def encode_array(self, text: str) -> npt.NDArray[np.int64]:
        return np.asarray(self._encoding.encode_ordinary(text), dtype=np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        return self._encoding.decode(list(ids))

    def save(self, directory: Path) -> None:
        spec: dict[str, Any] = {"kind": "tiktoken", "encoding": self.name}
        if self._ranks_file is not None:
            directory.mkdir(parents=True, exist_ok=True)
            target = directory / TIKTOKEN_RANKS_FILE
            if self._ranks_file.resolve() != target.resolve():
                tmp = directory / f".{TIKTOKEN_RANKS_FILE}.tmp"
                shutil.copyfile(self._ranks_file, tmp)
                os.replace(tmp, target)
            spec["file"] = TIKTOKEN_RANKS_FILE
        atomic_write_text(directory / SPEC_FILE, json.dumps(spec))


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """tiktoken reads its cache location only from the environment."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def load_tokenizer(directory: Path, cache_dir: Path = Path("~/.cache/ml_playground")) -> Tokenizer:
    """Rebuild a tokenizer saved by ``save``; a missing or unreadable spec names the file."""
    spec_path = directory / SPEC_FILE
    try:
        spec = json.loads(spec_path.read_text("utf-8"))
        kind = spec["kind"]
    except FileNotFoundError:
        raise DataError("tokenizer spec not found (run prepare first)", path=spec_path) from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"unreadable tokenizer spec ({exc})", path=spec_path) from None
    if kind == "char":
        return CharTokenizer(spec["chars"])
    if kind == "bpe":
        return BpeTokenizer(HfTokenizer.from_file(str(directory / spec["file"])))
    if kind == "tiktoken":
        if "file" in spec:
            return TiktokenTokenizer.from_file(spec["encoding"], directory / spec["file"])
        return TiktokenTokenizer.by_name(spec["encoding"], cache_dir)
    raise DataError(f"unknown tokenizer kind {kind!r}", path=spec_path)
