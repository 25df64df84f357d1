"""``prepare``: raw input -> ``train.bin``/``val.bin`` token files, ``meta.json`` and the tokenizer, in ``dataset_dir``.

One pipeline, its stages chosen once from the config (``stages.choose_stages``): source (``corpus``,
``chat_corpus``) -> records (``record_corpus``) -> encoder (``encoders``) -> layout (``layouts``) ->
``meta.json``, written last. Every file is written atomically; re-running on unchanged input and
settings does nothing and says so.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml_playground.configuration.models import FiltersConfig, PrepareConfig
from ml_playground.core.atomic import atomic_write_text
from ml_playground.core.errors import ConfigError, DataError
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.data_pipeline.chat_corpus import ChatRecords, conversation_records
from ml_playground.data_pipeline.corpus import kept_records, kept_speeches, read_inputs
from ml_playground.data_pipeline.encoders import (
    ConditionedBpe,
    RecordEncoder,
    build_tokenizer_check,
    own_tokenizer,
    pretrained_records,
)
from ml_playground.data_pipeline.layouts import Written, write_records, write_stream
from ml_playground.data_pipeline.meta import META_FILE, TOKENIZER_DIR, read_meta
from ml_playground.data_pipeline.record_corpus import (
    RecordSet,
    validation_records,
    write_protocol_files,
    write_record_files,
)
from ml_playground.data_pipeline.sources.records import ReadStats, SniffedFile
from ml_playground.data_pipeline.sources.text import SourceText
from ml_playground.data_pipeline.stages import CHAT_FORMATS, Stages, choose_stages
from ml_playground.data_pipeline.streaming import token_dtype

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
    return all((config.dataset_dir / name).is_file() for name in meta.get("files", []))


def _write_meta(
    config: PrepareConfig,
    stages: Stages,
    sources: list[SourceText],
    tokenizer: Tokenizer,
    characters: int,
    written: Written,
    files: tuple[str, ...],
) -> None:
    records = stages.layout == "records"
    meta = {
        "format_version": META_FORMAT_VERSION,
        "tokenizer": {"kind": tokenizer.kind, "dir": TOKENIZER_DIR},
        "vocab_size": tokenizer.vocab_size,
        "dtype": np.dtype(token_dtype(tokenizer.vocab_size)).name,
        "train_tokens": written.train_tokens,
        "val_tokens": written.val_tokens,
        "characters": characters,
        "loss_mask": records,
        "record_index": records,
        "conditioning": config.conditioning,
        "eos_id": tokenizer.eos_token_id,
        "sources": _source_entries(sources),
        "settings": _settings_fingerprint(config),
        "fingerprint": hashlib.sha256(b"".join(s.sha256.encode() for s in sources)).hexdigest(),
        "stages": {"source": stages.source, "encoder": stages.encoder, "layout": stages.layout},
        "files": list(files),
        **(written.finished.meta if written.finished else {}),
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
    build_tokenizer_check(config)
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


def read_records(
    stages: Stages, config: PrepareConfig, sources: list[SourceText], files: list[SniffedFile]
) -> RecordSet:
    """The source and records stages."""
    out = config.dataset_dir
    stats = ReadStats()
    if stages.source == "text":
        return RecordSet(files, lambda: iter(()))
    if stages.source == "protocols":
        return write_protocol_files(kept_speeches(config, sources, stats), out, config, stats)
    if stages.source == "records":
        return write_record_files(kept_records(config, sources, files, stats), out, config, stats)
    return conversation_records(config, sources)


def record_encoder(stages: Stages, config: PrepareConfig, records: RecordSet, n_val: int) -> RecordEncoder:
    """The encoder stage of a records layout; the last ``n_val`` records are validation."""
    if stages.encoder == "chat":
        return ChatRecords(config, records, n_val)
    if stages.encoder == "header":
        return ConditionedBpe(config, records, n_val)
    return pretrained_records(config, records)


def prepare(config: PrepareConfig) -> PrepareReport:
    check_settings(config)
    sources, files = read_inputs(config)
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
    stages = choose_stages(config)
    out = config.dataset_dir
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _run(config, stages, sources, files)
    except BaseException:
        if created and not any(out.iterdir()):  # a refused input leaves no empty folder behind
            out.rmdir()
        raise


def _run(config: PrepareConfig, stages: Stages, sources: list[SourceText], files: list[SniffedFile]) -> PrepareReport:
    """The stages, in order; ``meta.json`` last."""
    out = config.dataset_dir
    records = read_records(stages, config, sources, files)
    input_path = Path(config.input_path)
    details = [stages.describe(), *records.details]
    if stages.layout == "stream":
        tokenizer, characters, split = own_tokenizer(config, records.text_files)
        written = write_stream(
            out, records.text_files, tokenizer, split, whole=stages.encoder == "pretrained", input_path=input_path
        )
    else:
        n_val = validation_records(config, records.count)
        encoder = record_encoder(stages, config, records, n_val)
        written = write_records(out, records.read(), records.count, n_val, encoder, input_path=input_path)
        tokenizer = encoder.tokenizer
        assert written.finished is not None
        details += written.finished.details
        characters = written.finished.characters or records.characters
    _write_meta(config, stages, sources, tokenizer, characters, written, records.written)
    return PrepareReport(
        out,
        False,
        len(sources),
        characters,
        written.train_tokens,
        written.val_tokens,
        tokenizer.vocab_size,
        {str(s.path): s.encoding for s in sources},
        records.warnings,
        details,
    )
