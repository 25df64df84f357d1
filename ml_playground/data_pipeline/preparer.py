"""Raw text -> ``train.bin``/``val.bin`` token files, ``meta.json`` and the tokenizer, in ``dataset_dir``.

Every file is written atomically with ``meta.json`` last; re-running on unchanged input and
settings does nothing and says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ml_playground.configuration.models import FiltersConfig, PrepareConfig
from ml_playground.core.atomic import atomic_open, atomic_write_text
from ml_playground.core.errors import ConfigError, DataError
from ml_playground.core.tokenizer import BpeTokenizer, CharTokenizer, PretrainedTokenizer, TiktokenTokenizer
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.data_pipeline.chat_corpus import CHAT_FORMATS, VAL_CONVERSATIONS, chat_splits, conversations_jsonl
from ml_playground.data_pipeline.corpus import (
    Corpus,
    build_corpus,
    iter_speech_records,
    iter_xml_speeches,
    read_inputs,
    streams,
)
from ml_playground.data_pipeline.header import format_header
from ml_playground.data_pipeline.meta import META_FILE, TOKENIZER_DIR, read_meta
from ml_playground.data_pipeline.packing import check_template, pack_records, template_header
from ml_playground.data_pipeline.record_corpus import (
    CORPUS_FILE,
    DROPOUT_SEED,
    encode_header_records,
    header_fields,
    validation_records,
    write_record_files,
    write_speech_table_and_corpus,
)
from ml_playground.data_pipeline.sources.records import ReadStats, SniffedFile, SpeechRecord, sniff_file
from ml_playground.data_pipeline.sources.text import (
    SourceText,
)
from ml_playground.data_pipeline.speeches import JSONL_FILE, write_records, write_speeches
from ml_playground.data_pipeline.streaming import (
    Split,
    TokenFileWriter,
    char_counts,
    count_characters,
    encode_into,
    iter_chunks,
    token_dtype,
)

META_FORMAT_VERSION = 1
MAX_FILES_LISTED = 40


@dataclass(frozen=True)
class PrepareReport:
    dataset_dir: Path
    skipped: bool
    files: int
    characters: int
    train_tokens: int
    val_tokens: int
    vocab_size: int
    file_encodings: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    @property
    def encodings(self) -> dict[str, int]:
        return dict(Counter(self.file_encodings.values()))

    def summary(self) -> str:
        if self.skipped:
            return f"dataset in {self.dataset_dir} is up to date with its sources; nothing to do"
        chars_per_token = self.characters / max(1, self.train_tokens + self.val_tokens)
        lines = [f"warning: {warning}" for warning in self.warnings]
        listed = list(self.file_encodings.items())
        lines += [f"  {Path(path).name}: {encoding}" for path, encoding in listed[:MAX_FILES_LISTED]]
        if len(listed) > MAX_FILES_LISTED:
            lines.append(f"  ... and {len(listed) - MAX_FILES_LISTED} more (each listed in {META_FILE})")
        encodings = ", ".join(f"{name} {count}" for name, count in sorted(self.encodings.items()))
        lines.append(f"files: {self.files} (encodings: {encodings})")
        lines += self.details
        lines.append(
            f"prepared {self.dataset_dir}: {self.characters:,} characters -> "
            f"{self.train_tokens:,} train + {self.val_tokens:,} val tokens, vocab {self.vocab_size}, "
            f"{chars_per_token:.2f} characters/token"
        )
        return "\n".join(lines)


def build_tokenizer(config: PrepareConfig, train_text: str) -> Tokenizer:
    build_tokenizer_check(config)
    if config.tokenizer == "char":
        return CharTokenizer.train(train_text, config.min_char_count)
    if config.tokenizer == "bpe":  # (header-conditioned BPE datasets are encoded record by record: record_corpus)
        return BpeTokenizer.train([train_text], config.bpe_vocab_size)
    name = "gpt2" if config.tokenizer == "gpt2" else config.tiktoken_encoding
    if config.tiktoken_file is not None:
        return TiktokenTokenizer.from_file(name, config.tiktoken_file, config.cache_dir)
    return TiktokenTokenizer.by_name(name, config.cache_dir)


SplitIds = tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8] | None, npt.NDArray[np.int64] | None]
"""A split's token ids, its loss mask and its record index (the last two for records packed with EOS)."""


def _tokenize(config: PrepareConfig, corpus: Corpus) -> tuple[Tokenizer, SplitIds, SplitIds]:
    """Train/val token ids; records are packed with EOS, a loss mask and a record index (Hugging Face tokenizers)."""
    text = corpus.text
    split_at = int(len(text) * (1.0 - config.val_fraction))
    train_text, val_text = text[:split_at], text[split_at:]
    tokenizer: Tokenizer
    if config.tokenizer == "hf":
        assert config.hf_tokenizer is not None  # ExperimentConfig fills it from train.model.base_model
        pretrained = PretrainedTokenizer.from_pretrained(
            config.hf_tokenizer, key="prepare.hf_tokenizer", cache_dir=config.cache_dir
        )
        records = corpus.records
        if records is None and corpus.speech_records is not None:  # speakger, csv, speech_txt, conditioned
            records = [record.as_dict() for record in corpus.speech_records]
        if records is not None:
            return (pretrained, *_pack_split(config, records, pretrained))
        tokenizer = pretrained
    else:
        # char vocabularies see the whole text (a character only in val would be unencodable), unless
        # rare characters are cut; BPE merges are learnt from train only.
        vocab_text = train_text if config.tokenizer == "bpe" or config.min_char_count > 1 else text
        tokenizer = build_tokenizer(config, vocab_text)
    return tokenizer, (tokenizer.encode_array(train_text), None, None), (tokenizer.encode_array(val_text), None, None)


def _record_header(config: PrepareConfig, count: int) -> tuple[Callable[[int, Mapping[str, Any]], str] | None, bool]:
    """What goes before each record's text, and whether it is kept out of the loss.

    A conditioning header is plain text for a pretrained tokenizer (its markers are not special tokens
    there), drawn with the same speaker/topic dropout as the GPT family's, and never a target.
    """
    if config.conditioning == "header":
        draws = np.random.default_rng(DROPOUT_SEED).random((count, 2))
        return (
            lambda position, record: format_header(header_fields(SpeechRecord(**record), draws[position], config))
        ), True
    if config.template is not None:
        return template_header(config.template), config.mask_template
    return None, False


def _pack_split(
    config: PrepareConfig, records: list[dict[str, Any]], tokenizer: PretrainedTokenizer
) -> tuple[SplitIds, SplitIds]:
    """The last ``val_fraction`` of the records (at least one) is validation."""
    records = [r for r in records if r.get("kind", "speech") == "speech"]
    if config.template is not None:
        check_template(config.template, sorted({key for record in records for key in record}))
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no end-of-sequence token to separate records", key="prepare.hf_tokenizer")
    n_val = validation_records(config, len(records))
    header, mask_header = _record_header(config, len(records))
    splits = []
    for offset, part in ((0, records[:-n_val]), (len(records) - n_val, records[-n_val:])):
        shifted = (lambda position, record, at=offset: header(at + position, record)) if header else None
        packed = pack_records(part, tokenizer, eos, header=shifted, mask_header=mask_header)
        splits.append((packed.ids, packed.mask, packed.index))
    return splits[0], splits[1]


def _settings_fingerprint(config: PrepareConfig) -> dict[str, Any]:
    keys = (
        "val_fraction",
        "tokenizer",
        "bpe_vocab_size",
        "tiktoken_encoding",
        "encoding",
        "format",
        "interjections",
        "non_protocol",
        "min_char_count",
        "hf_tokenizer",
        "template",
        "mask_template",
        "conditioning",
        "malformed",
        "speaker_dropout",
        "topic_dropout",
        "chat_template",
        "chat_turns",
        "chat_max_tokens",
    )
    settings = {key: getattr(config, key) for key in keys}
    settings["columns"] = config.columns.model_dump()
    settings["filters"] = config.filters.model_dump()
    settings["metadata_dir"] = str(config.metadata_dir) if config.metadata_dir else None
    settings["tiktoken_file"] = str(config.tiktoken_file) if config.tiktoken_file else None
    if config.format == "bundestag_qa":  # how much of an answer is kept is part of the data
        settings["answer_max_chars"] = config.answer_max_chars
    return settings


def _source_entries(sources: list[SourceText]) -> list[dict[str, str]]:
    return [{"path": str(s.path), "sha256": s.sha256, "encoding": s.encoding} for s in sources]


def _up_to_date(config: PrepareConfig, sources: list[SourceText]) -> bool:
    try:
        meta = read_meta(config.dataset_dir)
    except DataError:
        return False
    wanted = _source_entries(sources)
    if meta.get("sources") != wanted or meta.get("settings") != _settings_fingerprint(config):
        return False
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in ("train", "val"):
        path = config.dataset_dir / f"{split}.bin"
        if not path.is_file() or path.stat().st_size != meta[f"{split}_tokens"] * itemsize:
            return False
    if meta.get("record_index") and not all(
        (config.dataset_dir / f"{split}_index.bin").is_file() for split in ("train", "val")
    ):
        return False
    return not (config.format == "bundestag" and not (config.dataset_dir / JSONL_FILE).is_file())


def _write_tokens(path: Path, ids: npt.NDArray[Any], dtype: type[np.integer[Any]]) -> None:
    with atomic_open(path) as handle:
        handle.write(ids.astype(dtype).tobytes())


def _streamed_tokenizer(config: PrepareConfig, files: list[SniffedFile]) -> tuple[Tokenizer, int, Split]:
    """The tokenizer, the number of characters, and where the validation part starts."""
    if config.tokenizer == "char" and config.min_char_count <= 1:
        # one pass: the counts give the vocabulary (the whole text: a character only in val would be
        # unencodable) and the number of characters
        counts = char_counts(iter_chunks(files))
        characters = int(counts.sum())
        return CharTokenizer.from_counts(counts), characters, _split(config, characters)
    characters = count_characters(files)
    split = _split(config, characters)
    train_parts = (train for train, _ in split.parts(iter_chunks(files)) if train)
    if config.tokenizer == "char":  # rare characters are counted on the training part only
        return CharTokenizer.from_counts(char_counts(train_parts), config.min_char_count), characters, split
    if config.tokenizer == "bpe":  # merges are learnt from train only
        return BpeTokenizer.train(train_parts, config.bpe_vocab_size), characters, split
    return build_tokenizer(config, ""), characters, split


def _split(config: PrepareConfig, characters: int) -> Split:
    return Split(int(characters * (1.0 - config.val_fraction)))


def _prepare_streaming(config: PrepareConfig, sources: list[SourceText], files: list[SniffedFile]) -> PrepareReport:
    tokenizer, characters, split = _streamed_tokenizer(config, files)
    dtype = token_dtype(tokenizer.vocab_size)
    out = config.dataset_dir
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "train.bin") as train_handle, atomic_open(out / "val.bin") as val_handle:
        train, val = TokenFileWriter(train_handle, dtype), TokenFileWriter(val_handle, dtype)
        encode_into(files, split, tokenizer.encode_array, train, val)
        if val.count < 2:  # raised inside: neither token file is kept
            raise DataError(
                f"validation split has {val.count} tokens; use more text or a larger prepare.val_fraction",
                path=Path(config.input_path),
            )
        tokenizer.save(out / TOKENIZER_DIR)
    _write_meta(config, sources, tokenizer, dtype, characters, train.count, val.count, loss_mask=False)
    encodings = {str(s.path): s.encoding for s in sources}
    return PrepareReport(out, False, len(sources), characters, train.count, val.count, tokenizer.vocab_size, encodings)


def _write_meta(
    config: PrepareConfig,
    sources: list[SourceText],
    tokenizer: Tokenizer,
    dtype: type[np.unsignedinteger[Any]],
    characters: int,
    train_tokens: int,
    val_tokens: int,
    *,
    loss_mask: bool,
    record_index: bool = False,
    extra: dict[str, Any] | None = None,
) -> None:
    meta = {
        "format_version": META_FORMAT_VERSION,
        "tokenizer": {"kind": tokenizer.kind, "dir": TOKENIZER_DIR},
        "vocab_size": tokenizer.vocab_size,
        "dtype": np.dtype(dtype).name,
        "train_tokens": train_tokens,
        "val_tokens": val_tokens,
        "characters": characters,
        "loss_mask": loss_mask,
        "record_index": record_index,
        "conditioning": config.conditioning,
        "eos_id": tokenizer.eos_token_id,
        "sources": _source_entries(sources),
        "settings": _settings_fingerprint(config),
        "fingerprint": hashlib.sha256(b"".join(s.sha256.encode() for s in sources)).hexdigest(),
        **(extra or {}),
    }
    atomic_write_text(config.dataset_dir / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False))


def check_settings(config: PrepareConfig) -> None:
    """Combinations the config model cannot see as wrong on its own."""
    if config.format in CHAT_FORMATS:
        _check_chat_settings(config)
    if config.format == "text" and config.conditioning == "header":
        raise ConfigError("conditioning = 'header' needs records (a format other than 'text')", key="prepare.format")
    if config.format == "text" and config.filters != FiltersConfig():
        raise ConfigError(
            "format 'text' has no records to filter; use a format with records (jsonl, csv, bundestag, ...)",
            key="prepare.filters",
        )
    if config.format == "text" and config.template is not None:
        raise ConfigError(
            "format 'text' has no records to put a template before; use a format with records", key="prepare.template"
        )
    if config.conditioning == "header" and config.template is not None:
        raise ConfigError(
            "conditioning = 'header' writes its own header before each record; leave prepare.template out",
            key="prepare.template",
        )
    if config.tokenizer != "hf" and config.template is not None:
        raise ConfigError(
            "a template needs tokenizer = 'hf' (records are packed with its EOS token)", key="prepare.template"
        )


def _check_chat_settings(config: PrepareConfig) -> None:
    if config.tokenizer != "hf":
        raise ConfigError(
            f"format {config.format!r} needs a pretrained base's tokenizer and chat template (tokenizer = 'hf', "
            "train.model.kind = 'hf_lora'); the gpt family has no chat template of its own",
            key="prepare.tokenizer",
        )
    for key, value, default in (
        ("filters", config.filters, FiltersConfig()),
        ("template", config.template, None),
        ("conditioning", config.conditioning, "none"),
    ):
        if value != default:
            raise ConfigError(
                f"format {config.format!r} renders conversations through the chat template; leave prepare.{key} out",
                key=f"prepare.{key}",
            )


def _prepare_chat(config: PrepareConfig, sources: list[SourceText]) -> PrepareReport:
    splits = chat_splits(config, sources)
    train, val = splits.train, splits.val
    out = config.dataset_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / VAL_CONVERSATIONS, conversations_jsonl(splits.val_conversations))
    return _write_dataset(
        config,
        sources,
        splits.tokenizer,
        (train.ids, train.mask, train.index),
        (val.ids, val.mask, val.index),
        splits.characters,
        warnings=splits.warnings,
        details=splits.details,
        extra_meta={"chat": splits.chat, "record_windows": "whole"},
    )


def _prepare_header_records(
    config: PrepareConfig, sources: list[SourceText], csv_files: list[SniffedFile]
) -> PrepareReport:
    """Records streamed to ``records.jsonl``, then encoded one by one with their header (record index + mask)."""
    build_tokenizer_check(config)
    out = config.dataset_dir
    out.mkdir(parents=True, exist_ok=True)
    stats = ReadStats()
    summary = write_record_files(iter_speech_records(config, sources, csv_files, stats), out, config, stats)
    encoded = encode_header_records(config, out, summary.kept)
    encoded.tokenizer.save(out / TOKENIZER_DIR)
    dtype = token_dtype(encoded.tokenizer.vocab_size)
    _write_meta(
        config,
        sources,
        encoded.tokenizer,
        dtype,
        summary.characters,
        encoded.train_tokens,
        encoded.val_tokens,
        loss_mask=True,
        record_index=True,
    )
    details = [*summary.details, f"records: {encoded.train_records:,} train, {encoded.val_records:,} validation"]
    encodings = {str(s.path): s.encoding for s in sources}
    return PrepareReport(
        out,
        False,
        len(sources),
        summary.characters,
        encoded.train_tokens,
        encoded.val_tokens,
        encoded.tokenizer.vocab_size,
        encodings,
        summary.warnings,
        details,
    )


def _prepare_xml_protocols(config: PrepareConfig, sources: list[SourceText]) -> PrepareReport:
    """The speeches table and ``corpus.txt`` streamed from the XML, then the corpus tokenized in chunks."""
    out = config.dataset_dir
    out.mkdir(parents=True, exist_ok=True)
    stats = ReadStats()
    summary = write_speech_table_and_corpus(iter_xml_speeches(config, sources, stats), out, config, stats)
    report = _prepare_streaming(config, sources, [sniff_file(out / CORPUS_FILE, "utf-8")])
    return dataclasses.replace(
        report,
        file_encodings={str(s.path): s.encoding for s in sources},
        warnings=summary.warnings,
        details=summary.details,
    )


def build_tokenizer_check(config: PrepareConfig) -> None:
    if config.conditioning == "header" and config.tokenizer != "bpe":
        raise ConfigError(
            "conditioning = 'header' needs tokenizer = 'bpe' (its markers become special tokens) or 'hf' "
            "(a pretrained base reads them as plain text)",
            key="prepare.tokenizer",
        )


def prepare(config: PrepareConfig) -> PrepareReport:
    check_settings(config)
    sources, csv_files = read_inputs(config)
    if _up_to_date(config, sources):
        meta = read_meta(config.dataset_dir)
        return PrepareReport(
            config.dataset_dir,
            True,
            len(sources),
            meta["characters"],
            meta["train_tokens"],
            meta["val_tokens"],
            meta["vocab_size"],
        )
    if streams(config):
        return _prepare_streaming(config, sources, csv_files)
    if config.format in CHAT_FORMATS:
        return _prepare_chat(config, sources)
    if config.conditioning == "header" and config.tokenizer != "hf":
        return _prepare_header_records(config, sources, csv_files)
    if config.format == "bundestag_xml" and config.tokenizer != "hf":
        return _prepare_xml_protocols(config, sources)
    corpus = build_corpus(config, sources, csv_files)
    text = corpus.text
    tokenizer, (train_ids, train_mask, train_index), (val_ids, val_mask, val_index) = _tokenize(config, corpus)
    if len(val_ids) < 2:
        raise DataError(
            f"validation split has {len(val_ids)} tokens; use more text or a larger prepare.val_fraction",
            path=Path(config.input_path),
        )
    out = config.dataset_dir
    out.mkdir(parents=True, exist_ok=True)
    if config.format == "bundestag" and corpus.records is not None:
        write_speeches(out, corpus.records)
    if corpus.speech_records is not None:
        write_records(out, corpus.speech_records, conditioning=config.conditioning)
    if config.format != "text":
        atomic_write_text(out / CORPUS_FILE, text)
    return _write_dataset(
        config,
        sources,
        tokenizer,
        (train_ids, train_mask, train_index),
        (val_ids, val_mask, val_index),
        len(text),
        warnings=corpus.warnings,
        details=corpus.details,
    )


def _write_dataset(
    config: PrepareConfig,
    sources: list[SourceText],
    tokenizer: Tokenizer,
    train: SplitIds,
    val: SplitIds,
    characters: int,
    *,
    warnings: list[str],
    details: list[str],
    extra_meta: dict[str, Any] | None = None,
) -> PrepareReport:
    """The tokenizer, the token files (with their masks and record indexes), then ``meta.json`` last."""
    out = config.dataset_dir
    dtype = token_dtype(tokenizer.vocab_size)
    tokenizer.save(out / TOKENIZER_DIR)
    for split, (ids, mask, index) in (("train", train), ("val", val)):
        _write_tokens(out / f"{split}.bin", ids, dtype)
        if mask is not None:
            _write_tokens(out / f"{split}_mask.bin", mask, np.uint8)
        if index is not None:
            _write_tokens(out / f"{split}_index.bin", index, np.int64)
    _write_meta(
        config,
        sources,
        tokenizer,
        dtype,
        characters,
        len(train[0]),
        len(val[0]),
        loss_mask=train[1] is not None,
        record_index=train[2] is not None,
        extra=extra_meta,
    )
    return PrepareReport(
        out,
        False,
        len(sources),
        characters,
        len(train[0]),
        len(val[0]),
        tokenizer.vocab_size,
        {str(s.path): s.encoding for s in sources},
        warnings,
        details,
    )
