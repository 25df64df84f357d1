"""The speeches table (``speeches.jsonl`` and ``speeches.csv``) and the records (``records.jsonl`` with
``conditions.json``) in a dataset folder.

The speeches table is written by ``record_corpus.write_protocol_files`` and read by anything that
trains on speeches (SpeakGer, LoRA fine-tuning). Required keys: ``speaker``, ``role``, ``party``,
``session``, ``date``, ``text``, ``source_file``; the parser adds ``period``, ``constituency`` and
``kind`` (speech or interjection).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml_playground.core.atomic import atomic_open_text
from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.sources.records import ReadStats, SpeechRecord

JSONL_FILE = "speeches.jsonl"
RECORDS_FILE = "records.jsonl"
CONDITIONS_FILE = "conditions.json"
CSV_FILE = "speeches.csv"
REQUIRED_KEYS = ("speaker", "role", "party", "session", "date", "text", "source_file")


def iter_speeches(path: Path) -> Iterator[dict[str, Any]]:
    """Stream records from a ``speeches.jsonl``; a bad line names the file and line."""
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("speeches table not found (prepare a Bundestag dataset first)", path=path) from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"line {number} is not JSON ({exc.msg})", path=path) from None
            missing = [key for key in REQUIRED_KEYS if key not in record]
            if missing:
                raise DataError(f"line {number} lacks {', '.join(missing)}", path=path)
            yield record


@dataclass
class RecordCounts:
    """What was written, for the prepare summary: records, their characters, per party and per decade."""

    count: int = 0
    characters: int = 0
    parties: Counter[str] = field(default_factory=Counter)  # "(none)" for records without a party
    decades: Counter[str] = field(default_factory=Counter)

    def add(self, record: SpeechRecord) -> None:
        self.count += 1
        self.characters += len(record.text)
        self.parties[record.party or "(none)"] += 1
        self.decades[f"{record.year // 10 * 10}s" if record.year else "(unknown)"] += 1


def write_records(
    directory: Path, records: Iterable[SpeechRecord], *, conditioning: str, stats: ReadStats
) -> RecordCounts:
    """``records.jsonl`` (every speech kept, normalised) and ``conditions.json`` (the known speakers and
    parties, for checking and completing sampling requests), streamed: the one writer of both files."""
    counts = RecordCounts()
    speakers: dict[str, Counter[str]] = {}
    years: set[int] = set()
    with atomic_open_text(directory / RECORDS_FILE) as handle:
        for record in records:
            handle.write(json.dumps(record.as_dict(), ensure_ascii=False) + "\n")
            counts.add(record)
            if record.year is not None:
                years.add(record.year)
            if record.speaker:
                speakers.setdefault(record.speaker, Counter())[record.party] += 1
        if counts.count == 0:
            raise stats.nothing_kept("speeches")
    conditions = {
        "conditioning": conditioning,
        "parties": {party: n for party, n in counts.parties.most_common() if party != "(none)"},
        "speakers": {
            name: {"speeches": sum(parties.values()), "party": parties.most_common(1)[0][0]}
            for name, parties in sorted(speakers.items())
        },
        "years": sorted(years),
    }
    with atomic_open_text(directory / CONDITIONS_FILE) as handle:
        handle.write(json.dumps(conditions, ensure_ascii=False, indent=1))
    return counts


def read_conditions(directory: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((directory / CONDITIONS_FILE).read_text("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{CONDITIONS_FILE} not found (prepare this dataset again)", path=directory) from None
    return data


def iter_records(directory: Path) -> Iterator[SpeechRecord]:
    with (directory / RECORDS_FILE).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield SpeechRecord(**json.loads(line))
