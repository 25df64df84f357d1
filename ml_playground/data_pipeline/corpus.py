"""Decoded sources -> the training corpus, per ``prepare.format``.

``text`` concatenates the files. ``bundestag`` parses plenary protocols into speeches (a speeches
table beside the corpus) and renders each speech as its speaker line followed by the text, so that
sampling can start from a speaker line such as ``Dr. Angela Merkel, Bundeskanzlerin:``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.sources.bundestag import NotAProtocolError, Speech, parse_protocol
from ml_playground.data_pipeline.sources.text import SourceText


@dataclass
class Corpus:
    text: str
    records: list[dict[str, Any]] | None = None
    warnings: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


def render_speeches(speeches: list[Speech]) -> str:
    """Speaker line, text, blank line; interjection records are not part of the corpus."""
    return "".join(f"{s.header()}\n{s.text}\n\n" for s in speeches if s.kind == "speech")


def build_corpus(config: PrepareConfig, sources: list[SourceText]) -> Corpus:
    if config.format == "text":
        return Corpus("\n".join(source.text for source in sources))
    if config.format == "jsonl":
        return _jsonl_corpus(sources)
    return _bundestag_corpus(config, sources)


def _jsonl_corpus(sources: list[SourceText]) -> Corpus:
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
    text = "".join(f"{record['text']}\n\n" for record in records)
    return Corpus(text, records, details=[f"records: {len(records):,}"])


def _bundestag_corpus(config: PrepareConfig, sources: list[SourceText]) -> Corpus:
    parts: list[str] = []
    speeches: list[Speech] = []
    warnings: list[str] = []
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
        speeches.extend(protocol.speeches)
        dropped.update(protocol.dropped_lines)
        parts.append(render_speeches(protocol.speeches))
    spoken = [s for s in speeches if s.kind == "speech"]
    if sources and not spoken and not any(p.strip() for p in parts):
        raise DataError("no speeches found in these protocols", key="prepare.input_path")
    parties = Counter(s.party for s in spoken if s.party)
    details = [
        f"speeches: {len(spoken):,} by {len({s.speaker for s in spoken}):,} speakers"
        + (f", {len(speeches) - len(spoken):,} interjection records" if config.interjections == "separate" else ""),
        "parties: " + (", ".join(f"{party} {count}" for party, count in parties.most_common()) or "none"),
        "dropped lines: "
        + (", ".join(f"{what} {count:,}" for what, count in sorted(dropped.items()) if count) or "none"),
    ]
    return Corpus("".join(parts), [s.as_record() for s in speeches], warnings, details)
