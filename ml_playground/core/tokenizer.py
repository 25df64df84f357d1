"""Tokenizers: character-level, byte-level BPE trained locally (``tokenizers``), and tiktoken encodings.

Each saves itself as ``tokenizer.json`` (our small spec) plus its own files in a folder, and
``load_tokenizer`` rebuilds it from that folder alone: datasets and checkpoints carry one.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import tiktoken
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HfTokenizer

from ml_playground.core.atomic import atomic_write_bytes, atomic_write_text
from ml_playground.core.errors import DataError, UserError
from ml_playground.core.tokenizer_protocol import Tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SPEC_FILE = "tokenizer.json"
BPE_FILE = "bpe.json"
TIKTOKEN_RANKS_FILE = "ranks.tiktoken"
HF_TOKENIZER_DIR = "hf"

# The official rank files tiktoken downloads, with the sha256 it expects (from tiktoken_ext.openai_public).
# A local copy is checked against the hash and put where tiktoken's own loader looks for its cache, so
# the encoding (split pattern, special tokens) is tiktoken's own, offline.
_RANKS_BASE_URL = "https://openaipublic.blob.core.windows.net/encodings/"
OFFICIAL_RANK_FILES = {
    "r50k_base": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "p50k_base": "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
# gpt2 and r50k_base are the same ranks, split pattern and special token.
_SAME_RANKS = {"gpt2": "r50k_base"}
ENDOFTEXT = "<|endoftext|>"
END_OF_RECORD = "<|end|>"  # a header-conditioned record's end (data_pipeline/header.py names the markers)


UNKNOWN_CHAR = "\ufffd"


class _Defaults:
    """What most tokenizers answer alike; each class overrides what it knows better."""

    @property
    def eos_token_id(self) -> int | None:
        return None

    @property
    def chat_template(self) -> str | None:
        return None

    @property
    def unknown_symbol(self) -> str | None:
        return None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def token_id(self, token: str) -> int | None:
        return None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def characters_outside(self, text: str) -> set[str]:
        return set()


class CharTokenizer(_Defaults):
    """One id per character, vocabulary sorted so that the ids are stable for a given corpus.

    With ``unknown`` set (a character in the vocabulary), characters outside the vocabulary
    encode to it instead of being an error; ``train`` sets it when rare characters were cut.
    """

    def __init__(self, chars: Sequence[str], unknown: str | None = None) -> None:
        self.chars = list(chars)
        self.unknown = unknown
        self._index = {ch: i for i, ch in enumerate(self.chars)}
        if unknown is not None and unknown not in self._index:
            raise DataError(f"unknown symbol {unknown!r} is not in the vocabulary")
        fill = -1 if unknown is None else self._index[unknown]
        self._table = np.full(max((ord(c) for c in self.chars), default=0) + 1, fill, dtype=np.int64)
        for i, ch in enumerate(self.chars):
            self._table[ord(ch)] = i

    @classmethod
    def train(cls, text: str, min_count: int = 1) -> CharTokenizer:
        """Every character of ``text``; with ``min_count > 1`` rarer ones become ``UNKNOWN_CHAR``."""
        return cls.from_counts(np.bincount(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)), min_count)

    @classmethod
    def from_counts(cls, counts: npt.NDArray[np.int64], min_count: int = 1) -> CharTokenizer:
        """From occurrences per code point (index = code point)."""
        kept = [chr(int(code)) for code in np.flatnonzero(counts >= min_count)]
        if min_count <= 1 or len(kept) == int(np.count_nonzero(counts)):
            return cls(kept)
        return cls(sorted({*kept, UNKNOWN_CHAR}), unknown=UNKNOWN_CHAR)

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
            if self.unknown is None:
                self._raise_unknown(text)
            else:
                codes = np.where(codes < self._table.size, codes, ord(self.unknown))
        ids = self._table[codes]
        if ids.size and ids.min() < 0:
            self._raise_unknown(text)
        return ids

    def _raise_unknown(self, text: str) -> None:
        unknown = sorted(set(text) - set(self._index))
        raise UserError(f"characters not in the vocabulary: {''.join(unknown)!r}")

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    @property
    def unknown_symbol(self) -> str | None:
        return self.unknown

    def characters_outside(self, text: str) -> set[str]:
        return set(text) - set(self.chars)

    def stop_texts(self) -> list[str]:
        return []

    def token_byte_lengths(self) -> npt.NDArray[np.int64]:
        return np.array([len(char.encode("utf-8")) for char in self.chars], dtype=np.int64)

    def to_backend(self) -> HfTokenizer:
        """One token per character (a word-level vocabulary split into single characters)."""
        vocab = {char: index for index, char in enumerate(self.chars)}
        backend = HfTokenizer(models.WordLevel(vocab=vocab, unk_token=self.unknown))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()
        return backend

    def save(self, directory: Path) -> None:
        spec: dict[str, Any] = {"kind": "char", "chars": self.chars}
        if self.unknown is not None:
            spec["unknown"] = self.unknown
        atomic_write_text(directory / SPEC_FILE, json.dumps(spec, ensure_ascii=False))


class BpeTokenizer(_Defaults):
    """Byte-level BPE trained on the corpus with Hugging Face ``tokenizers``: any text round-trips."""

    def __init__(self, tokenizer: HfTokenizer) -> None:
        self._tokenizer = tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = ()) -> BpeTokenizer:
        """Byte-level BPE; ``special_tokens`` get ids of their own and are never split or merged.

        Each text is cut where the pre-tokenizer cuts anyway (:func:`split_for_batch_encoding`), so
        the trainer counts the same words as encoding the whole text would see, in pieces small
        enough for its parallel word count (1 MB pieces took a third longer here).
        """
        tokenizer = HfTokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=list(special_tokens),
            show_progress=False,
        )
        tokenizer.train_from_iterator((piece for text in texts for piece in split_for_batch_encoding(text)), trainer)
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
        """Large texts are cut where the pre-tokenizer cuts anyway and encoded in parallel batches.

        ``encode_batch_fast`` skips the character offsets nobody here reads (a third faster).
        """
        pieces = split_for_batch_encoding(text)
        if len(pieces) == 1:
            return np.asarray(self._tokenizer.encode(text).ids, dtype=np.int64)
        encodings = self._tokenizer.encode_batch_fast(pieces)
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=False))

    @property
    def backend(self) -> HfTokenizer:
        """The ``tokenizers`` object itself (for export)."""
        return self._tokenizer

    def token_id(self, token: str) -> int | None:
        found = self._tokenizer.token_to_id(token)
        return int(found) if found is not None else None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(encoding.ids) for encoding in self._tokenizer.encode_batch_fast(list(texts))]

    def stop_texts(self) -> list[str]:
        """A header-conditioned vocabulary's end of speech."""
        return [END_OF_RECORD] if self.token_id(END_OF_RECORD) is not None else []

    def token_byte_lengths(self) -> npt.NDArray[np.int64]:
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        special = set(self._tokenizer.get_added_tokens_decoder())
        for token, index in self._tokenizer.get_vocab(with_added_tokens=False).items():
            if index not in special:
                lengths[index] = len(token)  # one alphabet character per byte
        return lengths

    def to_backend(self) -> HfTokenizer:
        return self._tokenizer

    def save(self, directory: Path) -> None:
        atomic_write_text(directory / BPE_FILE, self._tokenizer.to_str())
        atomic_write_text(directory / SPEC_FILE, json.dumps({"kind": "bpe", "file": BPE_FILE}))


PIECE_CHARS = 1 << 13  # a piece's bookkeeping (two offsets a byte) stays within a core's own cache


def split_for_batch_encoding(text: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    """Cut after a newline that has a non-space character on both sides, about every ``piece_chars``.

    Byte-level pre-tokenizers (the GPT-2 split pattern) never join tokens across that point: the
    newline is a piece of its own whichever side of the cut it is on, and the next piece starts
    without a leading space. So encoding the pieces separately gives exactly the ids of encoding
    the whole text. (A newline after a space is not safe: "a  \n" alone ends in one whitespace piece,
    while in "a  \nb" the spaces and the newline are two.)

    The tokenizer keeps a pair of offsets for every byte of a piece while it splits and merges, so the
    piece size decides whether that bookkeeping stays in a core's own cache. On a 2-core AMD EPYC
    (1 MiB of L2 a core; 2026-12-07) the 8.9 MB Bundestag corpus encoded 5% faster in pieces of 8K
    characters than of 64K with nothing between the calls, 1.35-1.45x faster alternating with the
    library's batch call on lines (1.2-1.55x that call instead of 0.85-1.09x), and trained its merges
    10% faster; 2K to 16K were within noise of 8K.
    """
    pieces = []
    start = 0
    while len(text) - start > piece_chars:
        newline = text.find("\n", start + piece_chars - 1)
        while (
            newline != -1 and newline + 2 < len(text) and (text[newline + 1].isspace() or text[newline - 1].isspace())
        ):
            newline = text.find("\n", newline + 1)
        if newline == -1 or newline + 2 >= len(text):
            break
        cut = newline + 1
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


class TiktokenTokenizer(_Defaults):
    """A tiktoken encoding, by name (fetched once into a cache) or from a local rank file."""

    def __init__(self, encoding: tiktoken.Encoding, name: str, ranks: bytes | None = None) -> None:
        self._encoding = encoding
        self.name = name
        self._ranks = ranks

    @classmethod
    def from_file(
        cls,
        name: str,
        ranks_file: Path,
        cache_dir: Path = Path("~/.cache/ml_playground"),
        get_encoding: Callable[[str], tiktoken.Encoding] = tiktoken.get_encoding,
    ) -> TiktokenTokenizer:
        """The official ``name`` encoding from a local copy of its rank file (plain or ``.gz``)."""
        official = _SAME_RANKS.get(name, name)
        if official not in OFFICIAL_RANK_FILES:
            supported = sorted({*OFFICIAL_RANK_FILES, *_SAME_RANKS})
            raise UserError(
                f"a local rank file is supported for {supported}, not {name!r}", key="prepare.tiktoken_file"
            )
        if not ranks_file.is_file():
            raise DataError("tiktoken rank file not found", path=ranks_file)
        data = ranks_file.read_bytes()
        if ranks_file.suffix == ".gz":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as exc:
                raise DataError(f"not a gzip file ({exc})", path=ranks_file) from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != OFFICIAL_RANK_FILES[official]:
            raise DataError(
                f"not the official {official} rank file (sha256 {digest[:12]}…, tiktoken expects "
                f"{OFFICIAL_RANK_FILES[official][:12]}…)",
                path=ranks_file,
            )
        cache = cache_dir.expanduser() / "tiktoken"
        seeded = cache / hashlib.sha1(f"{_RANKS_BASE_URL}{official}.tiktoken".encode()).hexdigest()
        if not seeded.is_file() or hashlib.sha256(seeded.read_bytes()).hexdigest() != digest:
            atomic_write_bytes(seeded, data)
        with _env("TIKTOKEN_CACHE_DIR", str(cache)):
            encoding = get_encoding(official)
        return cls(encoding, name, data)

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
                "run once online, or set prepare.tiktoken_file to a local copy of the official rank file "
                "(`make rank-files` writes .cache/tiktoken_ranks/{r50k_base,cl100k_base,o200k_base}.tiktoken)",
            ) from None
        return cls(encoding, name)

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

    def token_id(self, token: str) -> int | None:
        try:
            return int(self._encoding.encode_single_token(token))
        except KeyError:
            return None

    def stop_texts(self) -> list[str]:
        return [ENDOFTEXT] if ENDOFTEXT in self._encoding.special_tokens_set else []

    def token_byte_lengths(self) -> npt.NDArray[np.int64]:
        encoding = self._encoding
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        special = {encoding.encode_single_token(token) for token in encoding.special_tokens_set}
        for index in range(encoding.n_vocab):
            if index not in special:
                try:
                    lengths[index] = len(encoding.decode_single_token_bytes(index))
                except KeyError:  # a hole in the ranks
                    lengths[index] = 0
        return lengths

    def to_backend(self) -> HfTokenizer:
        """tiktoken's ranks, split pattern and special tokens through ``transformers``' converter."""
        import base64
        import tempfile

        from transformers.convert_slow_tokenizer import TikTokenConverter

        encoding = self._encoding
        with tempfile.TemporaryDirectory() as tmp:
            ranks = Path(tmp) / "ranks.tiktoken"
            lines = (
                f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in encoding._mergeable_ranks.items()
            )
            ranks.write_text("".join(lines), encoding="ascii")
            specials = sorted(encoding._special_tokens, key=encoding._special_tokens.__getitem__)
            converter = TikTokenConverter(  # type: ignore[no-untyped-call]
                vocab_file=str(ranks), pattern=encoding._pat_str, extra_special_tokens=specials
            )
            converted: HfTokenizer = converter.converted()
        return converted

    def save(self, directory: Path) -> None:
        spec: dict[str, Any] = {"kind": "tiktoken", "encoding": self.name}
        if self._ranks is not None:
            atomic_write_bytes(directory / TIKTOKEN_RANKS_FILE, self._ranks)
            spec["file"] = TIKTOKEN_RANKS_FILE
        atomic_write_text(directory / SPEC_FILE, json.dumps(spec))


class PretrainedTokenizer(_Defaults):
    """A Hugging Face ``transformers`` tokenizer (a base model's own), saved with ``save_pretrained``.

    ``encode`` adds no special tokens: the data pipeline places BOS/EOS itself.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, source: str) -> None:
        self.tokenizer = tokenizer
        self.source = source

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        revision: str | None = None,
        key: str = "train.model.base_model",
        cache_dir: Path = Path("~/.cache/ml_playground"),
    ) -> PretrainedTokenizer:
        from ml_playground.core.hub import load_pretrained_tokenizer

        return cls(load_pretrained_tokenizer(name_or_path, revision, key, cache_dir), name_or_path)

    @property
    def kind(self) -> str:
        return "hf"

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def eos_token_id(self) -> int | None:
        eos = self.tokenizer.eos_token_id
        return eos if isinstance(eos, int) else None

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def encode_array(self, text: str) -> npt.NDArray[np.int64]:
        return np.asarray(self.encode(text), dtype=np.int64)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Through the fast backend without offsets or masks when there is one (the same ids as ``encode``)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return [self.encode(text) for text in texts]
        return [list(encoding.ids) for encoding in backend.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    @property
    def chat_template(self) -> str | None:
        template = getattr(self.tokenizer, "chat_template", None)
        return template if isinstance(template, str) and template else None

    def token_id(self, token: str) -> int | None:
        found = self.tokenizer.convert_tokens_to_ids(token)
        unknown = self.tokenizer.unk_token_id
        return (
            int(found) if isinstance(found, int) and (found != unknown or token == self.tokenizer.unk_token) else None
        )

    def stop_texts(self) -> list[str]:
        eos = self.tokenizer.eos_token
        return [eos] if isinstance(eos, str) and eos else []

    def token_byte_lengths(self) -> npt.NDArray[np.int64]:
        """Byte-level vocabularies by their alphabet; others (SentencePiece) by decoding each id."""
        from ml_playground.core.token_bytes import byte_level_alphabet

        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        alphabet = byte_level_alphabet()
        special = set(self.tokenizer.all_special_ids)
        for index, token in enumerate(self.tokenizer.convert_ids_to_tokens(list(range(len(lengths))))):
            if index in special or token is None:
                continue
            if all(char in alphabet for char in token):
                lengths[index] = len(token)
            else:
                lengths[index] = len(self.decode([index]).encode("utf-8"))
        return lengths

    def to_backend(self) -> HfTokenizer:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise UserError(f"{self.source}: a slow (Python) tokenizer has no `tokenizers` backend to export")
        return HfTokenizer.from_str(backend.to_str())

    def save(self, directory: Path) -> None:
        """The tokenizer's own files go to ``hf/`` (its ``tokenizer.json`` is not our spec file)."""
        target = directory / HF_TOKENIZER_DIR
        target.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(target))
        spec = {"kind": "hf", "dir": HF_TOKENIZER_DIR, "source": self.source}
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
        return CharTokenizer(spec["chars"], spec.get("unknown"))
    if kind == "bpe":
        return BpeTokenizer(HfTokenizer.from_file(str(directory / spec["file"])))
    if kind == "tiktoken":
        if "file" in spec:
            return TiktokenTokenizer.from_file(spec["encoding"], directory / spec["file"], cache_dir)
        return TiktokenTokenizer.by_name(spec["encoding"], cache_dir)
    if kind == "hf":
        from ml_playground.core.hub import load_pretrained_tokenizer

        folder = directory / spec.get("dir", HF_TOKENIZER_DIR)
        return PretrainedTokenizer(load_pretrained_tokenizer(str(folder)), spec.get("source", str(folder)))
    raise DataError(f"unknown tokenizer kind {kind!r}", path=spec_path)
