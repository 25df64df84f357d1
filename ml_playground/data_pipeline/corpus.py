"""The source stage of ``prepare``: the inputs of ``prepare.format`` -> what ``prepare.filters`` keeps of them.

Three kinds of source (``stages.choose_stages`` says which): plain text, streamed in chunks; plenary
protocols (text or XML) -> speeches, rendered as the speaker line followed by the text, so that
sampling can start from a speaker line such as ``Dr. Angela Merkel, Bundeskanzlerin:``; and speech
records (SpeakGer, CSV, speech files, JSONL, and every format when a conditioning header is asked
for). ``corpus_text`` renders the same filtered items as ``corpus.txt`` holds them, for ``eval --data``.
Conversations (the chat formats) have their own source: ``chat_corpus``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.header import format_example
from ml_playground.data_pipeline.sources.bundestag import NotAProtocolError, Speech, parse_protocol
from ml_playground.data_pipeline.sources.bundestag_xml import (
    MalformedXmlError,
    file_sha256,
    iter_documents,
    list_xml_inputs,
    parse_session,
)
from ml_playground.data_pipeline.sources.records import (
    PRESIDING_ROLES,
    ReadStats,
    SniffedFile,
    SpeechRecord,
    from_protocol_speech,
    keep,
    keep_speech,
    read_csv_file,
    read_speech_txt,
    sniff_file,
    year_of,
)
from ml_playground.data_pipeline.sources.speakger import MpMetadata, read_speakger_file, resolve_columns
from ml_playground.data_pipeline.sources.text import (
    TEXT_SUFFIXES,
    SourceText,
    list_text_files,
    read_sources,
    resolve_input,
)
from ml_playground.data_pipeline.stages import PROTOCOL_FORMATS
from ml_playground.data_pipeline.streaming import iter_chunks

CSV_SUFFIXES = {".csv", ".tsv"}


def read_inputs(config: PrepareConfig) -> tuple[list[SourceText], list[SniffedFile]]:
    """Record sources are read whole; plain text, CSV and XML are only hashed (and sniffed) here, streamed later."""
    if config.format in ("bundestag_xml", "bundestag_qa"):
        paths = list_xml_inputs(resolve_input(config.input_path, config.cache_dir))
        return [SourceText(path, "", file_sha256(path), "xml") for path in paths], []
    if config.format not in ("speakger", "csv", "text"):
        return read_sources(config.input_path, config.cache_dir, config.encoding), []
    suffixes = CSV_SUFFIXES if config.format in ("speakger", "csv") else TEXT_SUFFIXES
    files = list_text_files(resolve_input(config.input_path, config.cache_dir), suffixes)
    sniffed = [sniff_file(path, config.encoding) for path in files]
    return [SourceText(f.path, "", f.sha256, f.encoding) for f in sniffed], sniffed


Passage = str
"""The text of an input file that is no plenary protocol (``prepare.non_protocol = "plain"``), kept as it is."""


def render_speech(item: Speech | Passage) -> str:
    """A protocol speech as ``corpus.txt`` holds it: speaker line, text, blank line (interjections: nothing)."""
    if isinstance(item, str):
        return item.strip() + "\n\n"
    return f"{item.header()}\n{item.text}\n\n" if item.kind == "speech" else ""


DROPOUT_SEED = 20240229


def dropout_draws() -> Iterator[npt.NDArray[np.float64]]:
    """One (speaker, topic) draw per record, in record order: the same for ``corpus.txt`` and the encoder."""
    rng = np.random.default_rng(DROPOUT_SEED)
    while True:
        yield rng.random(2)


def header_fields(record: SpeechRecord, draws: npt.NDArray[np.float64], config: PrepareConfig) -> dict[str, object]:
    """The record's conditioning fields, less those ``speaker_dropout`` / ``topic_dropout`` leave out this time."""
    fields = record.conditioning_fields
    if draws[0] < config.speaker_dropout:
        fields = {**fields, "speaker": None}
    if draws[1] < config.topic_dropout:
        fields = {**fields, "topic": None}
    return fields


def render_record(record: SpeechRecord, config: PrepareConfig, draws: npt.NDArray[np.float64]) -> str:
    """A speech record as ``corpus.txt`` holds it: after its conditioning header as drawn, or its text and a
    blank line."""
    if config.conditioning == "header":
        return format_example(header_fields(record, draws, config), record.text)
    return f"{record.text}\n\n"


def corpus_text(config: PrepareConfig) -> str:
    """The text the source stage makes of ``config.input_path``: records rendered and filtered as prepare
    renders them into ``corpus.txt`` (``eval --data`` reads through this, conditioning aside)."""
    sources, files = read_inputs(config)
    stats = ReadStats()
    if config.format == "text":
        return "".join(iter_chunks(files))
    if config.format in PROTOCOL_FORMATS and config.conditioning == "none":
        return "".join(render_speech(item) for item in kept_speeches(config, sources, stats))
    draws = dropout_draws()
    return "".join(
        render_record(record, config, next(draws)) for record, _ in kept_records(config, sources, files, stats)
    )


def kept_speeches(config: PrepareConfig, sources: list[SourceText], stats: ReadStats) -> Iterator[Speech | Passage]:
    """The protocols' speeches (interjection records too) that ``prepare.filters`` keeps, and plain passages."""
    for item in iter_protocol_items(config, sources, stats):
        if isinstance(item, str):
            yield item
        elif (kept := keep_speech(item, config.filters, stats)) is not None:
            yield kept


def kept_records(
    config: PrepareConfig, sources: list[SourceText], csv_files: list[SniffedFile], stats: ReadStats
) -> Iterator[tuple[SpeechRecord, dict[str, Any]]]:
    """The records ``prepare.filters`` keeps, each with the fields a template may name (a JSONL line's own
    keys, or the record's)."""
    if config.format == "jsonl":
        for raw in _jsonl_records(sources):
            kept = keep(_jsonl_record(raw), config.filters, stats)
            if kept is not None:
                yield kept, {**raw, "text": kept.text}
        return
    for read in iter_speech_records(config, sources, csv_files, stats):
        if (record := keep(read, config.filters, stats)) is not None:
            yield record, record.as_dict()


def iter_protocol_items(
    config: PrepareConfig, sources: list[SourceText], stats: ReadStats
) -> Iterator[Speech | Passage]:
    """Every speech of the protocols (XML or text), in file order; a text file that is no protocol is
    refused or kept as a plain passage (``prepare.non_protocol``)."""
    if config.format == "bundestag_xml":
        yield from iter_xml_speeches(config, sources, stats)
        return
    for source in sources:
        try:
            protocol = parse_protocol(source.text, str(source.path), config.interjections)
        except NotAProtocolError as exc:
            if config.non_protocol == "error":
                raise DataError(
                    f'{exc.message}; set prepare.non_protocol = "plain" to use it as plain text', path=source.path
                ) from None
            stats.notes.append(f"{source.path}: not a plenary protocol ({exc.message}); used as plain text")
            yield source.text
            continue
        stats.lines_dropped.update(protocol.dropped_lines)
        yield from protocol.speeches


def iter_xml_speeches(config: PrepareConfig, sources: list[SourceText], stats: ReadStats) -> Iterator[Speech]:
    """Every speech of the XML protocols, session by session; malformed sessions counted or refused."""
    unknown: Counter[str] = Counter()
    for source in sources:
        for document in iter_documents(source.path):
            try:
                session = parse_session(document, config.interjections)
            except MalformedXmlError as exc:
                stats.bad_row(exc.message, config.malformed, Path(document.name))
                continue
            unknown.update(session.unknown_groups)
            yield from session.speeches
    if unknown:
        stats.notes.append(
            "speeches with a parliamentary group that is no known spelling (kept without a party): "
            + ", ".join(f"{group!r} {count}" for group, count in unknown.most_common(5))
        )


def _jsonl_record(record: dict[str, Any]) -> SpeechRecord:
    year = record.get("year")
    return SpeechRecord(
        text=str(record["text"]),
        speaker=str(record.get("speaker") or ""),
        party=str(record.get("party") or ""),
        year=int(year) if isinstance(year, int) else year_of(str(record.get("date") or "")),
        topic=str(record.get("topic") or ""),
        parliament=str(record.get("parliament") or ""),
        period=record.get("period") if isinstance(record.get("period"), int) else None,
        chair=bool(record.get("chair")) or bool(PRESIDING_ROLES.match(str(record.get("role") or ""))),
        interjection=record.get("kind") == "interjection",
        source_file=str(record.get("source_file") or ""),
    )


def iter_speech_records(
    config: PrepareConfig, sources: list[SourceText], csv_files: list[SniffedFile], stats: ReadStats
) -> Iterator[SpeechRecord]:
    """Every record of the input, unfiltered; CSV files are streamed row by row."""
    if config.format == "speakger":
        metadata = MpMetadata.load_from(config.metadata_dir)
        stats.notes.extend(metadata.notes)
        columns = resolve_columns(config.columns)
        for csv_file in csv_files:
            yield from read_speakger_file(csv_file, columns, metadata, stats, config.malformed)
    elif config.format == "csv":
        for csv_file in csv_files:
            yield from read_csv_file(csv_file, config.columns, stats, config.malformed)
    elif config.format == "speech_txt":
        yield from (read_speech_txt(source.path, source.text) for source in sources)
    elif config.format == "jsonl":
        yield from (_jsonl_record(record) for record in _jsonl_records(sources))
    elif config.format == "bundestag_xml":
        yield from (from_protocol_speech(speech) for speech in iter_xml_speeches(config, sources, stats))
    else:
        for item in iter_protocol_items(config, sources, stats):
            if not isinstance(item, str):
                yield from_protocol_speech(item)


def _jsonl_records(sources: list[SourceText]) -> list[dict[str, Any]]:
    """One JSON object per line with at least a ``text`` string (a speeches.jsonl qualifies)."""
    records: list[dict[str, Any]] = []
    for source in sources:
        for number, line in enumerate(source.text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"line {number} is not JSON ({exc.msg})", path=source.path) from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(f"line {number} has no 'text' string", path=source.path)
            if record.get("kind", "speech") == "speech":
                records.append(record)
    if not records:
        raise DataError("no records with text", key="prepare.input_path")
    return records
