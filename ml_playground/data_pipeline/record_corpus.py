"""The records stage of ``prepare``: what the source stage kept -> the files beside the dataset, streamed.

Each file has one writer, and memory grows with counters, not with the corpus:

- plenary protocols: the speeches table (``speeches.jsonl``/``.csv``: every speech kept, interjection
  records too) and ``corpus.txt`` (speaker line, text, blank line per speech);
- speech records: ``records.jsonl`` + ``conditions.json`` (``speeches.write_records``) and
  ``corpus.txt`` (each record's text, after its conditioning header when one is asked for).

``corpus.txt`` is the text the model trains on: the stream layout encodes it as it is, and with a
conditioning header it shows each header as drawn. ``speaker_dropout`` / ``topic_dropout`` leave a
field out of that share of the headers (a fixed draw per record, in record order), so a prompt that
names only a party is as familiar to the model as one that names a speaker.

What comes out is a ``RecordSet``: the text files the stream layout encodes, and the records, read
back in order, that the records layout encodes one by one.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.atomic import atomic_open_text
from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.corpus import Passage, dropout_draws, render_record, render_speech
from ml_playground.data_pipeline.sources.bundestag import Speech
from ml_playground.data_pipeline.sources.records import (
    ReadStats,
    SniffedFile,
    SpeechRecord,
    from_protocol_speech,
    sniff_file,
)
from ml_playground.data_pipeline.speeches import (
    CONDITIONS_FILE,
    CSV_FILE,
    JSONL_FILE,
    RECORDS_FILE,
    REQUIRED_KEYS,
    RecordCounts,
    iter_records,
    iter_speeches,
    write_records,
)

CORPUS_FILE = "corpus.txt"
SPEECH_COLUMNS = (*REQUIRED_KEYS, "period", "constituency", "kind", "topic", "speaker_id", "speaker_line")


@dataclass
class RecordSet:
    """What the source and records stages made, for the encoder and layout stages."""

    text_files: list[SniffedFile]  # the text the stream layout encodes (the inputs, or corpus.txt)
    read: Callable[[], Iterator[Any]]  # the records in order, for the records layout (read again on each call)
    count: int = 0
    characters: int = 0  # of the text the records layout encodes (``corpus.txt``), for the summary
    written: tuple[str, ...] = ()  # the files beside the dataset, which a prepared dataset must still have
    details: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def validation_records(config: PrepareConfig, total: int) -> int:
    """The last ``val_fraction`` of the records (at least one) is validation."""
    n_val = max(1, round(total * config.val_fraction))
    if total <= n_val:
        raise DataError(f"{total} record(s) are too few to split into train and validation", key="prepare.input_path")
    return n_val


def write_protocol_files(
    items: Iterator[Speech | Passage], out: Path, config: PrepareConfig, stats: ReadStats
) -> RecordSet:
    """``speeches.jsonl``/``.csv`` and ``corpus.txt`` from the kept speeches (and plain passages)."""
    counts = RecordCounts()  # the speeches (not interjection records)
    speakers: set[str] = set()
    characters = 0  # of corpus.txt
    with (
        atomic_open_text(out / JSONL_FILE) as jsonl,
        atomic_open_text(out / CSV_FILE, newline="") as table,
        atomic_open_text(out / CORPUS_FILE) as corpus,
    ):
        writer: csv.DictWriter[str] = csv.DictWriter(table, fieldnames=list[str](SPEECH_COLUMNS))
        writer.writeheader()
        for item in items:
            rendered = render_speech(item)
            corpus.write(rendered)
            characters += len(rendered)
            if isinstance(item, str):
                continue
            row = item.as_record()
            jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
            writer.writerow(row)
            if item.kind == "speech":
                counts.add(from_protocol_speech(item))
                speakers.add(item.speaker)
        if characters == 0:
            raise stats.nothing_kept("speeches")
    details, warnings = stats.summary(counts.count, counts.parties, counts.decades)
    details.insert(1, f"speakers: {len(speakers):,}")

    def speeches() -> Iterator[dict[str, Any]]:
        return (row for row in iter_speeches(out / JSONL_FILE) if row.get("kind", "speech") == "speech")

    return RecordSet(
        [_corpus_file(out)], speeches, counts.count, characters, (JSONL_FILE, CSV_FILE, CORPUS_FILE), details, warnings
    )


def write_record_files(
    records: Iterator[tuple[SpeechRecord, dict[str, Any]]], out: Path, config: PrepareConfig, stats: ReadStats
) -> RecordSet:
    """``records.jsonl``, ``conditions.json`` and ``corpus.txt`` from the kept records.

    A JSONL input keeps its lines' own keys for a template to name (held in memory, as the input was);
    every other source is read back from ``records.jsonl``."""
    own_keys: list[dict[str, Any]] | None = [] if config.format == "jsonl" and config.conditioning == "none" else None
    characters = 0
    draws = dropout_draws()
    with atomic_open_text(out / CORPUS_FILE) as corpus:

        def rendered() -> Iterator[SpeechRecord]:
            nonlocal characters
            for record, keys in records:
                text = render_record(record, config, next(draws))
                corpus.write(text)
                characters += len(text)
                if own_keys is not None:
                    own_keys.append(keys)
                yield record

        counts = write_records(out, rendered(), conditioning=config.conditioning, stats=stats)
    details, warnings = stats.summary(counts.count, counts.parties, counts.decades)

    def read() -> Iterator[dict[str, Any]]:
        return iter(own_keys) if own_keys is not None else (r.as_dict() for r in iter_records(out))

    files = (RECORDS_FILE, CONDITIONS_FILE, CORPUS_FILE)
    return RecordSet([_corpus_file(out)], read, counts.count, characters, files, details, warnings)


def _corpus_file(out: Path) -> SniffedFile:
    return sniff_file(out / CORPUS_FILE, "utf-8")
