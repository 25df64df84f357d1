"""The speeches table: one record per speech, as ``speeches.jsonl`` and ``speeches.csv`` in a dataset folder.

Written by the Bundestag preparer; read by anything that trains on speeches (SpeakGer, LoRA
fine-tuning). Required keys: ``speaker``, ``role``, ``party``, ``session``, ``date``, ``text``,
``source_file``; the parser adds ``period``, ``constituency`` and ``kind`` (speech or interjection).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ml_playground.core.atomic import atomic_open_text
from ml_playground.core.errors import DataError

JSONL_FILE = "speeches.jsonl"
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
