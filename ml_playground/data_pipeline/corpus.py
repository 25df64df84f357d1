"""Decoded sources -> the training corpus, per ``prepare.format``.

``text`` concatenates the files. ``bundestag`` parses plenary protocols into speeches (a speeches
table beside the corpus) and renders each speech as its speaker line followed by the text, so that
sampling can start from a speaker line such as ``Dr. Angela Merkel, Bundeskanzlerin:``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

RECORD_FORMATS = ("speakger", "csv", "speech_txt")
CSV_SUFFIXES = {".csv", ".tsv"}


def streams(config: PrepareConfig) -> bool:
    """Plain text with our own tokenizers is prepared in chunks (bounded memory, any corpus size)."""
    return config.format == "text" and config.tokenizer != "hf"


def read_inputs(config: PrepareConfig) -> tuple[list[SourceText], list[SniffedFile]]:
    """Record sources are read whole; plain text, CSV and XML are only hashed (and sniffed) here, streamed later."""
    if config.format in ("bundestag_xml", "bundestag_qa"):
        paths = list_xml_inputs(resolve_input(config.input_path, config.cache_dir))
        return [SourceText(path, "", file_sha256(path), "xml") for path in paths], []
    if config.format not in ("speakger", "csv") and not streams(config):
        return read_sources(config.input_path, config.cache_dir, config.encoding), []
    suffixes = CSV_SUFFIXES if config.format in ("speakger", "csv") else TEXT_SUFFIXES
    files = list_text_files(resolve_input(config.input_path, config.cache_dir), suffixes)
    sniffed = [sniff_file(path, config.encoding) for path in files]
    return [SourceText(f.path, "", f.sha256, f.encoding) for f in sniffed], sniffed


def corpus_text(config: PrepareConfig) -> str:
    """The text the source stage makes of ``config.input_path``: records rendered and filtered as prepare
    renders them for every format (``eval --data`` reads through this, conditioning aside)."""
    if config.format == "text":
        return "\n".join(source.text for source in read_sources(config.input_path, config.cache_dir, config.encoding))
    sources, csv_files = read_inputs(config)
    return build_corpus(config, sources, csv_files).text


@dataclass
class Corpus:
    text: str
    records: list[dict[str, Any]] | None = None
    warnings: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    speech_records: list[SpeechRecord] | None = None


def render_speeches(speeches: list[Speech]) -> str:
    """Speaker line, text, blank line; interjection records are not part of the corpus."""
    return "".join(f"{s.header()}\n{s.text}\n\n" for s in speeches if s.kind == "speech")


def build_corpus(
    config: PrepareConfig, sources: list[SourceText], csv_files: list[SniffedFile] | None = None
) -> Corpus:
    """``csv_files`` (formats speakger and csv) are streamed; ``sources`` hold decoded text files."""
    if config.format == "text":
        return Corpus("\n".join(source.text for source in sources))
    if config.conditioning == "header" or config.format in RECORD_FORMATS:
        return _record_corpus(config, sources, csv_files or [])
    if config.format == "jsonl":
        return _jsonl_corpus(sources, config)
    if config.format == "bundestag_xml":
        stats = ReadStats()
        speeches = _kept_speeches(iter_xml_speeches(config, sources, stats), config, stats)
        if not any(s.kind == "speech" for s in speeches):
            raise DataError("no speeches left after reading and filtering", key="prepare.filters")
        return Corpus(render_speeches(speeches), [s.as_record() for s in speeches], details=_dropped(stats))
    return _bundestag_corpus(config, sources)


def _kept_speeches(speeches: Iterable[Speech], config: PrepareConfig, stats: ReadStats) -> list[Speech]:
    """The speeches ``prepare.filters`` keeps (the reasons for the others counted in ``stats``)."""
    return [s for speech in speeches if (s := keep_speech(speech, config.filters, stats)) is not None]


def _dropped(stats: ReadStats) -> list[str]:
    if not stats.dropped:
        return []
    return ["dropped by prepare.filters: " + ", ".join(f"{why} {n:,}" for why, n in sorted(stats.dropped.items()))]


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
        corpus = _bundestag_corpus(config, sources)
        stats.notes.extend(corpus.warnings)
        for record in corpus.records or []:
            yield from_protocol_speech(Speech(**{k: v for k, v in record.items() if k != "speaker_line"}))


def _record_corpus(config: PrepareConfig, sources: list[SourceText], csv_files: list[SniffedFile]) -> Corpus:
    stats = ReadStats()
    read = iter_speech_records(config, sources, csv_files, stats)
    kept = [record for r in read if (record := keep(r, config.filters, stats)) is not None]
    if not kept:
        raise DataError("no speeches left after reading and filtering", key="prepare.input_path")
    if config.conditioning == "header":
        text = "".join(format_example(r.conditioning_fields, r.text) for r in kept)
    else:
        text = "".join(f"{r.text}\n\n" for r in kept)
    parties = Counter(r.party or "(none)" for r in kept)
    decades = Counter(f"{r.year // 10 * 10}s" if r.year else "(unknown)" for r in kept)
    details, warnings = stats.summary(len(kept), parties, decades)
    return Corpus(text, None, warnings, details, kept)


def _jsonl_corpus(sources: list[SourceText], config: PrepareConfig) -> Corpus:
    """The records ``prepare.filters`` keeps, their texts one after another."""
    stats = ReadStats()
    records: list[dict[str, Any]] = []
    for record in _jsonl_records(sources):
        kept = keep(_jsonl_record(record), config.filters, stats)
        if kept is not None:
            records.append({**record, "text": kept.text})
    if not records:
        raise DataError("no records left after filtering", key="prepare.filters")
    text = "".join(f"{record['text']}\n\n" for record in records)
    return Corpus(text, records, details=[f"records: {len(records):,}", *_dropped(stats)])


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


def _bundestag_corpus(config: PrepareConfig, sources: list[SourceText]) -> Corpus:
    parts: list[str] = []
    speeches: list[Speech] = []
    warnings: list[str] = []
    stats = ReadStats()
    dropped: Counter[str] = Counter()
    for source in sources:
        try:
            protocol = parse_protocol(source.text, str(source.path), config.interjections)
        except NotAProtocolError as exc:
            if config.non_protocol == "error":
                raise DataError(
                    f'{exc.message}; set prepare.non_protocol = "plain" to use it as plain text', path=source.path
                ) from None
            warnings.append(f"{source.path}: not a plenary protocol ({exc.message}); used as plain text")
            parts.append(source.text.strip() + "\n\n")
            continue
        kept = _kept_speeches(protocol.speeches, config, stats) if protocol.speeches else []
        speeches.extend(kept)
        dropped.update(protocol.dropped_lines)
        parts.append(render_speeches(kept))
    spoken = [s for s in speeches if s.kind == "speech"]
    if sources and not spoken and not any(p.strip() for p in parts):
        if stats.dropped:
            raise DataError("no speeches left after filtering", key="prepare.filters")
        raise DataError("no speeches found in these protocols", key="prepare.input_path")
    parties = Counter(s.party for s in spoken if s.party)
    details = [
        f"speeches: {len(spoken):,} by {len({s.speaker for s in spoken}):,} speakers"
        + (f", {len(speeches) - len(spoken):,} interjection records" if config.interjections == "separate" else ""),
        "parties: " + (", ".join(f"{party} {count}" for party, count in parties.most_common()) or "none"),
        "dropped lines: "
        + (", ".join(f"{what} {count:,}" for what, count in sorted(dropped.items()) if count) or "none"),
        *_dropped(stats),
    ]
    return Corpus("".join(parts), [s.as_record() for s in speeches], warnings, details)
