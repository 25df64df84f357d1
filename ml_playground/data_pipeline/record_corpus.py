"""Speech records -> files in ``dataset_dir``, streamed: memory grows with one batch of records, not the corpus.

Two shapes, both written in passes over the records on disk rather than a list in memory:

- ``conditioning = "header"``: ``records.jsonl`` + ``conditions.json`` first, then the BPE tokenizer is
  trained on the training records and every record is encoded as ``header + text + <|end|>\\n`` into
  ``{split}.bin``, with ``{split}_mask.bin`` (0 on header tokens: conditions are given, never learnt as
  targets) and ``{split}_index.bin`` (start, header tokens, all tokens of each record), which the
  record-aware batch sampler reads. The last ``val_fraction`` of the records are validation.
- protocols without a header (``bundestag_xml``): the speeches table (``speeches.jsonl``/``.csv``) and
  ``corpus.txt`` (speaker line, text, blank line), which the streaming text path then tokenizes.

``speaker_dropout`` / ``topic_dropout`` leave a field out of that share of the headers (a fixed draw per
record), so a prompt that names only a party is as familiar to the model as one that names a speaker.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.atomic import atomic_open, atomic_open_text
from ml_playground.core.errors import DataError
from ml_playground.core.tokenizer import BpeTokenizer
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.data_pipeline.header import END_TOKEN, SPECIAL_TOKENS, format_example, format_header
from ml_playground.data_pipeline.sources.bundestag import Speech
from ml_playground.data_pipeline.sources.records import ReadStats, SpeechRecord, from_protocol_speech, keep, keep_speech
from ml_playground.data_pipeline.speeches import (
    CSV_FILE,
    JSONL_FILE,
    REQUIRED_KEYS,
    iter_records,
    write_records,
)
from ml_playground.data_pipeline.streaming import TokenFileWriter, token_dtype

CORPUS_FILE = "corpus.txt"
ENCODE_BATCH = 512  # records encoded together (in parallel by ``tokenizers``)
DROPOUT_SEED = 20240229
SPEECH_COLUMNS = (*REQUIRED_KEYS, "period", "constituency", "kind", "topic", "speaker_id", "speaker_line")


@dataclass
class RecordSummary:
    """What was read and kept, for the prepare summary."""

    kept: int = 0
    characters: int = 0
    details: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EncodedSplits:
    tokenizer: Tokenizer
    train_tokens: int
    val_tokens: int
    train_records: int
    val_records: int


def _summary(parties: Counter[str], decades: Counter[str], stats: ReadStats, kept: int) -> RecordSummary:
    details, warnings = stats.summary(kept, parties, decades)
    return RecordSummary(kept, 0, details, warnings)


def write_record_files(
    records: Iterator[SpeechRecord], out: Path, config: PrepareConfig, stats: ReadStats
) -> RecordSummary:
    """Filter and write ``records.jsonl`` and ``conditions.json``; nothing is held but counters."""
    kept = (record for read in records if (record := keep(read, config.filters, stats)) is not None)
    counts = write_records(out, kept, conditioning=config.conditioning)
    summary = _summary(counts.parties, counts.decades, stats, counts.count)
    summary.characters = counts.characters
    return summary


def validation_records(config: PrepareConfig, total: int) -> int:
    n_val = max(1, round(total * config.val_fraction))
    if total <= n_val:
        raise DataError(f"{total} record(s) are too few to split into train and validation", key="prepare.input_path")
    return n_val


def header_fields(record: SpeechRecord, draws: npt.NDArray[np.float64], config: PrepareConfig) -> dict[str, object]:
    fields = record.conditioning_fields
    if draws[0] < config.speaker_dropout:
        fields = {**fields, "speaker": None}
    if draws[1] < config.topic_dropout:
        fields = {**fields, "topic": None}
    return fields


def encode_header_records(config: PrepareConfig, out: Path, total: int) -> EncodedSplits:
    """Train the BPE on the training records, then write tokens, masks and record indexes of both splits."""
    n_train = total - validation_records(config, total)
    train_records = itertools.islice(iter_records(out), n_train)
    examples = (format_example(r.conditioning_fields, r.text) for r in train_records)
    tokenizer = BpeTokenizer.train(examples, config.bpe_vocab_size, SPECIAL_TOKENS)
    dtype = token_dtype(tokenizer.vocab_size)
    rng = np.random.default_rng(DROPOUT_SEED)
    counts: dict[str, int] = {}
    with (
        atomic_open(out / "train.bin") as train_ids,
        atomic_open(out / "val.bin") as val_ids,
        atomic_open(out / "train_mask.bin") as train_mask,
        atomic_open(out / "val_mask.bin") as val_mask,
        atomic_open(out / "train_index.bin") as train_index,
        atomic_open(out / "val_index.bin") as val_index,
        atomic_open_text(out / CORPUS_FILE) as corpus,
    ):
        writers = {
            "train": (TokenFileWriter(train_ids, dtype), train_mask, train_index),
            "val": (TokenFileWriter(val_ids, dtype), val_mask, val_index),
        }
        number = 0
        for batch in _batches(iter_records(out), ENCODE_BATCH):
            draws = rng.random((len(batch), 2))
            headers = [format_header(header_fields(r, d, config)) for r, d in zip(batch, draws, strict=True)]
            bodies = [f"{r.text.strip()}{END_TOKEN}\n" for r in batch]
            encoded = tokenizer.encode_batch(headers + bodies)
            for position, (header, body) in enumerate(zip(encoded[: len(batch)], encoded[len(batch) :], strict=True)):
                split = "train" if number < n_train else "val"
                ids, mask, index = writers[split]
                row = np.asarray([[ids.count, len(header), len(header) + len(body)]], dtype=np.int64)
                ids.write(np.asarray(header + body, dtype=np.int64))
                mask.write(bytes(len(header)) + b"\x01" * len(body))
                index.write(row.tobytes())
                corpus.write(headers[position] + bodies[position])
                counts[split] = counts.get(split, 0) + 1
                number += 1
        train_count, val_count = writers["train"][0].count, writers["val"][0].count
    return EncodedSplits(tokenizer, train_count, val_count, counts.get("train", 0), counts.get("val", 0))


def _batches(records: Iterator[SpeechRecord], size: int) -> Iterator[list[SpeechRecord]]:
    batch: list[SpeechRecord] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_speech_table_and_corpus(
    speeches: Iterator[Speech],
    out: Path,
    config: PrepareConfig,
    stats: ReadStats,
) -> RecordSummary:
    """``speeches.jsonl``/``.csv`` (every record kept by the filters, interjections too) and ``corpus.txt``
    (speaker line, text, blank line per speech), streamed."""
    parties: Counter[str] = Counter()
    decades: Counter[str] = Counter()
    count = characters = 0
    with (
        atomic_open_text(out / JSONL_FILE) as jsonl,
        atomic_open_text(out / CSV_FILE, newline="") as table,
        atomic_open_text(out / CORPUS_FILE) as corpus,
    ):
        writer: csv.DictWriter[str] = csv.DictWriter(table, fieldnames=list[str](SPEECH_COLUMNS))
        writer.writeheader()
        for speech in speeches:
            kept = keep_speech(speech, config.filters, stats)
            if kept is None:
                continue
            speech = kept
            row = speech.as_record()
            jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
            writer.writerow(row)
            if speech.kind == "speech":
                corpus.write(f"{speech.header()}\n{speech.text}\n\n")
                count += 1
                characters += len(speech.text)
                parties[speech.party or "(none)"] += 1
                year = from_protocol_speech(speech).year
                decades[f"{year // 10 * 10}s" if year else "(unknown)"] += 1
        if count == 0:
            raise DataError("no speeches left after reading and filtering", key="prepare.input_path")
    summary = _summary(parties, decades, stats, count)
    summary.characters = characters
    return summary
