"""The encoder stage of ``prepare``: the tokenizer, and for record layouts what each record becomes.

- ``own_tokenizer``: char, BPE or tiktoken, built from the training part of the text the stream
  layout encodes (a character vocabulary from all of it unless rare characters are cut).
- ``RecordEncoder``s turn records into token ids, a loss mask, and the number of tokens before the
  record's own text (its header). Three of them:
  - ``ConditionedBpe``: our BPE with the conditioning markers as special tokens, trained on the
    training records; ``header + text + <|end|>\\n``, the header never a target;
  - ``PretrainedRecords``: a pretrained tokenizer; a conditioning header or ``prepare.template``
    (or nothing) + text + EOS. The EOS token is always a target, whatever the tokenizer's pad token
    is (Qwen's pad token *is* its EOS token; a pipeline that masks padding by id would silently mask
    EOS too, and the model would never learn to stop);
  - ``ChatRecords`` (``chat_corpus``): conversations through the base's chat template.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.errors import ConfigError, DataError
from ml_playground.core.tokenizer import BpeTokenizer, CharTokenizer, PretrainedTokenizer, TiktokenTokenizer
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.data_pipeline.corpus import dropout_draws, header_fields
from ml_playground.data_pipeline.header import END_TOKEN, SPECIAL_TOKENS, format_example, format_header
from ml_playground.data_pipeline.packing import check_template, render_header
from ml_playground.data_pipeline.record_corpus import RecordSet
from ml_playground.data_pipeline.sources.records import SniffedFile, SpeechRecord
from ml_playground.data_pipeline.streaming import Split, char_counts, count_characters, iter_chunks


@dataclass(frozen=True)
class EncodedRecord:
    ids: Sequence[int] | npt.NDArray[np.int64]
    mask: npt.NDArray[np.uint8]  # 1 where the token is a target of the loss
    header: int  # tokens before the record's own text (the index's second column)


@dataclass(frozen=True)
class Finished:
    """What an encoder adds once every record is written."""

    details: list[str]  # for the prepare summary
    meta: dict[str, Any] = field(default_factory=dict)  # for ``meta.json``
    characters: int | None = None  # the text that went in, where the encoder knows it better than corpus.txt


class RecordEncoder(Protocol):
    """What the records layout needs of an encoder."""

    tokenizer: Tokenizer

    def encode(self, batch: Sequence[tuple[int, Any]]) -> list[EncodedRecord | None]:
        """Each (position, record) of ``batch`` encoded, or None where the record is left out."""
        ...

    def finish(self, out: Path, train_records: int, val_records: int) -> Finished:
        """After the last record, before any token file is kept: refuse an empty split, write what
        belongs beside the tokens."""
        ...


def build_tokenizer_check(config: PrepareConfig) -> None:
    if config.conditioning == "header" and config.tokenizer not in ("bpe", "hf"):
        raise ConfigError(
            "conditioning = 'header' needs tokenizer = 'bpe' (its markers become special tokens) or 'hf' "
            "(a pretrained base reads them as plain text)",
            key="prepare.tokenizer",
        )


def pretrained_tokenizer(config: PrepareConfig) -> PretrainedTokenizer:
    assert config.hf_tokenizer is not None  # ExperimentConfig fills it from train.model.base_model
    return PretrainedTokenizer.from_pretrained(
        config.hf_tokenizer, key="prepare.hf_tokenizer", cache_dir=config.cache_dir
    )


def own_tokenizer(config: PrepareConfig, files: list[SniffedFile]) -> tuple[Tokenizer, int, Split]:
    """The tokenizer of a stream layout, the number of characters, and where the validation part starts.

    Character vocabularies see the whole text (a character only in validation would be unencodable)
    unless rare characters are cut; BPE merges are learnt from the training part only."""
    if config.tokenizer == "char" and config.min_char_count <= 1:
        counts = char_counts(iter_chunks(files))  # one pass: the vocabulary and the number of characters
        characters = int(counts.sum())
        return CharTokenizer.from_counts(counts), characters, _split(config, characters)
    characters = count_characters(files)
    split = _split(config, characters)
    if config.tokenizer == "hf":
        return pretrained_tokenizer(config), characters, split
    train_parts = (train for train, _ in split.parts(iter_chunks(files)) if train)
    if config.tokenizer == "char":
        return CharTokenizer.from_counts(char_counts(train_parts), config.min_char_count), characters, split
    if config.tokenizer == "bpe":
        return BpeTokenizer.train(train_parts, config.bpe_vocab_size), characters, split
    name = "gpt2" if config.tokenizer == "gpt2" else config.tiktoken_encoding
    if config.tiktoken_file is not None:
        return TiktokenTokenizer.from_file(name, config.tiktoken_file, config.cache_dir), characters, split
    return TiktokenTokenizer.by_name(name, config.cache_dir), characters, split


def _split(config: PrepareConfig, characters: int) -> Split:
    return Split(int(characters * (1.0 - config.val_fraction)))


def _no_extras(out: Path, train_records: int, val_records: int) -> Finished:
    return Finished([f"records: {train_records:,} train, {val_records:,} validation"])


class ConditionedBpe:
    """Our BPE, trained on the training records each after its whole header (every field, before any
    dropout), the markers as special tokens; each record then encodes after its header as drawn."""

    def __init__(self, config: PrepareConfig, records: RecordSet, n_val: int) -> None:
        """``n_val``: the last records, which are validation (the merges are learnt from the others)."""
        train = itertools.islice(records.read(), records.count - n_val)
        examples = (format_example(SpeechRecord(**r).conditioning_fields, r["text"]) for r in train)
        self.tokenizer: Tokenizer = BpeTokenizer.train(examples, config.bpe_vocab_size, SPECIAL_TOKENS)
        self.config = config
        self.draws = dropout_draws()

    def encode(self, batch: Sequence[tuple[int, Any]]) -> list[EncodedRecord | None]:
        records = [SpeechRecord(**record) for _, record in batch]
        headers = [format_header(header_fields(r, next(self.draws), self.config)) for r in records]
        bodies = [f"{r.text.strip()}{END_TOKEN}\n" for r in records]
        encoded = self.tokenizer.encode_batch(headers + bodies)
        return [
            EncodedRecord([*head, *body], _mask(len(head), len(body), mask_header=True), len(head))
            for head, body in zip(encoded[: len(batch)], encoded[len(batch) :], strict=True)
        ]

    finish = staticmethod(_no_extras)


class PretrainedRecords:
    """A pretrained tokenizer: ``header(record)`` (a conditioning header, a template, or nothing), the
    record's text, and EOS."""

    def __init__(
        self, tokenizer: Tokenizer, eos: int, header: Callable[[Mapping[str, Any]], str], *, mask_header: bool
    ) -> None:
        self.tokenizer = tokenizer
        self.eos = eos
        self.header = header
        self.mask_header = mask_header

    def encode(self, batch: Sequence[tuple[int, Any]]) -> list[EncodedRecord | None]:
        heads = [self.header(record) for _, record in batch]
        encoded = self.tokenizer.encode_batch(heads + [str(record["text"]) for _, record in batch])
        return [
            EncodedRecord([*head, *body, self.eos], _mask(len(head), len(body) + 1, self.mask_header), len(head))
            for head, body in zip(encoded[: len(batch)], encoded[len(batch) :], strict=True)
        ]

    finish = staticmethod(_no_extras)


def pretrained_records(config: PrepareConfig, records: RecordSet) -> PretrainedRecords:
    tokenizer = pretrained_tokenizer(config)
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no end-of-sequence token to separate records", key="prepare.hf_tokenizer")
    mask_header = config.conditioning == "header" or (config.template is not None and config.mask_template)
    return PretrainedRecords(tokenizer, tokenizer.eos_token_id, record_header(config, records), mask_header=mask_header)


def record_header(config: PrepareConfig, records: RecordSet) -> Callable[[Mapping[str, Any]], str]:
    """A conditioning header is plain text for a pretrained tokenizer (its markers are no special tokens
    there), drawn with the same speaker/topic dropout as our BPE's, and never a target."""
    if config.conditioning == "header":
        draws = dropout_draws()
        return lambda record: format_header(header_fields(SpeechRecord(**record), next(draws), config))
    template = config.template
    if template is not None:
        check_template(template, sorted({key for record in records.read() for key in record}))
        return lambda record: render_header(template, record)
    return lambda _record: ""


def _mask(header: int, body: int, mask_header: bool) -> npt.NDArray[np.uint8]:
    mask = np.ones(header + body, dtype=np.uint8)
    if mask_header:
        mask[:header] = 0
    return mask


def batched(items: Iterator[Any], size: int) -> Iterator[list[tuple[int, Any]]]:
    """(position, item) pairs in lists of ``size``."""
    numbered = enumerate(items)
    while batch := list(itertools.islice(numbered, size)):
        yield batch
