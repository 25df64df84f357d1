"""The speeches table: one record per speech, as ``speeches.jsonl`` and ``speeches.csv`` in a dataset folder.

Written by the Bundestag preparer; read by anything that trains on speeches (SpeakGer, LoRA
fine-tuning). Required keys: ``speaker``, ``role``, ``party``, ``session``, ``date``, ``text``,
``source_file``; the parser adds ``period``, ``constituency`` and ``kind`` (speech or interjection).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ml_playground.core.atomic import atomic_open_text
from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.sources.records import SpeechRecord

JSONL_FILE = "speeches.jsonl"
RECORDS_FILE = "records.jsonl"
CONDITIONS_FILE = "conditions.json"
CSV_FILE = "speeches.csv"
REQUIRED_KEYS = ("speaker", "role", "party", "session", "date", "text", "source_file")


def write_speeches(directory: Path, records: Sequence[dict[str, Any]]) -> None:
    """Both files, atomically; the column order is the required keys, then any others in first-seen order."""
    columns: list[str] = list(REQUIRED_KEYS)
    for record in records:
        columns.extend(key for key in record if key not in columns)
    with atomic_open_text(directory / JSONL_FILE) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    with atomic_open_text(directory / CSV_FILE, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)


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


def write_records(directory: Path, records: Sequence[SpeechRecord], *, conditioning: str) -> None:
    """``records.jsonl`` (every speech kept, normalised) and ``conditions.json`` (the known speakers and
    parties, for checking and completing sampling requests)."""
    with atomic_open_text(directory / RECORDS_FILE) as handle:
        for record in records:
            handle.write(json.dumps(record.as_dict(), ensure_ascii=False) + "\n")
    speakers: dict[str, Counter[str]] = {}
    for record in records:
        if record.speaker:
            speakers.setdefault(record.speaker, Counter())[record.party] += 1
    conditions = {
        "conditioning": conditioning,
        "parties": dict(Counter(r.party for r in records if r.party).most_common()),
        "speakers": {
            name: {"speeches": sum(parties.values()), "party": parties.most_common(1)[0][0]}
            for name, parties in sorted(speakers.items())
        },
        "years": sorted({r.year for r in records if r.year is not None}),
    }
    with atomic_open_text(directory / CONDITIONS_FILE) as handle:
        handle.write(json.dumps(conditions, ensure_ascii=False, indent=1))


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
