"""Speech records from any source, one shape: who spoke (speaker, party), when (year, period), where, and the text.

Readers stream: CSV rows are read one at a time (SpeakGer's files are gigabytes), so memory
grows with the speeches kept, not with the file.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ml_playground.configuration.models import ColumnsConfig, FiltersConfig
from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.sources.bundestag import Speech, normalize_party
from ml_playground.data_pipeline.sources.encoding import decode_bytes
from ml_playground.data_pipeline.sources.normalize import normalize_text

PRESIDING_ROLES = re.compile(r"^(?:Alters|Vize)?[Pp]räsident(?:in)?$")
_INTERJECTION_LINE = re.compile(r"^\s*\(.*\)\s*$")
_TRUE = {"1", "true", "yes", "ja", "wahr", "t", "y"}
_SNIFF_BYTES = 1 << 16
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # speeches are long; the default cap is 128 KiB


@dataclass(frozen=True)
class SpeechRecord:
    text: str
    speaker: str = ""
    party: str = ""
    year: int | None = None
    topic: str = ""
    parliament: str = ""
    period: int | None = None
    chair: bool = False
    interjection: bool = False
    source_file: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def conditioning_fields(self) -> dict[str, object]:
        return {"speaker": self.speaker, "party": self.party, "year": self.year, "topic": self.topic}


@dataclass
class ReadStats:
    """What a reader saw, for the prepare summary."""

    rows: int = 0
    malformed: int = 0
    malformed_examples: list[str] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    lines_dropped: Counter[str] = field(default_factory=Counter)  # protocol lines that are no speech

    def summary(self, kept: int, parties: Counter[str], decades: Counter[str]) -> tuple[list[str], list[str]]:
        """(details, warnings) for the prepare summary: what was kept, per party and decade, what was dropped."""
        details = [
            f"speeches: {kept:,} kept of {kept + sum(self.dropped.values()):,} read"
            + (f" ({self.rows:,} rows, {self.malformed:,} malformed and skipped)" if self.rows else ""),
            "per party: " + ", ".join(f"{party} {count:,}" for party, count in parties.most_common()),
            "per decade: " + ", ".join(f"{decade} {count:,}" for decade, count in sorted(decades.items())),
        ]
        if self.dropped:
            details.append("dropped: " + ", ".join(f"{why} {count:,}" for why, count in sorted(self.dropped.items())))
        if +self.lines_dropped:
            lines = ", ".join(f"{what} {count:,}" for what, count in sorted(self.lines_dropped.items()) if count)
            details.append(f"protocol lines that are no speech: {lines}")
        warnings = list(self.notes)
        if self.malformed:
            warnings.append(
                f"{self.malformed:,} malformed file(s) or row(s) skipped, for example: "
                + "; ".join(self.malformed_examples)
            )
        return details, warnings

    def nothing_kept(self, what: str) -> DataError:
        """No record survived: the filters' doing when they dropped any, else the input's."""
        if self.dropped:
            return DataError(f"no {what} left after filtering", key="prepare.filters")
        return DataError(f"no {what} found in the input", key="prepare.input_path")

    def bad_row(self, where: str, policy: str, path: Path) -> None:
        if policy == "error":
            raise DataError(f'{where}; set prepare.malformed = "skip" to count and skip such rows', path=path)
        self.malformed += 1
        if len(self.malformed_examples) < 3:
            self.malformed_examples.append(f"{path.name}: {where}")


def truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _TRUE


def year_of(value: str | None) -> int | None:
    match = re.search(r"\b(1[89]\d\d|20\d\d)\b", value or "")
    return int(match[1]) if match else None


def strip_interjection_lines(text: str) -> str:
    return "\n".join(line for line in text.split("\n") if not _INTERJECTION_LINE.match(line)).strip()


def keep(record: SpeechRecord, filters: FiltersConfig, stats: ReadStats) -> SpeechRecord | None:
    """Apply the configured filters; count why a record was dropped."""
    if filters.drop_interjections:
        if record.interjection:
            stats.dropped["interjection rows"] += 1
            return None
        record = SpeechRecord(**{**record.as_dict(), "text": strip_interjection_lines(record.text)})
    checks: list[tuple[bool, str]] = [
        (not record.text.strip(), "empty text"),
        (filters.drop_chair and record.chair, "chair"),
        (bool(filters.parliaments) and record.parliament not in filters.parliaments, "parliament"),
        (bool(filters.periods) and record.period not in filters.periods, "period"),
        (filters.year_min is not None and (record.year is None or record.year < filters.year_min), "year"),
        (filters.year_max is not None and (record.year is None or record.year > filters.year_max), "year"),
        (bool(filters.parties) and record.party not in filters.parties, "party"),
        (len(record.text) < filters.min_length, "too short"),
    ]
    for failed, reason in checks:
        if failed:
            stats.dropped[reason] += 1
            return None
    return record


def keep_speech(speech: Speech, filters: FiltersConfig, stats: ReadStats) -> Speech | None:
    """``keep`` for a protocol speech: the speech as kept (its (...) lines out under drop_interjections), or None."""
    record = keep(from_protocol_speech(speech), filters, stats)
    if record is None:
        return None
    return speech if record.text == speech.text else dataclasses.replace(speech, text=record.text)


def from_protocol_speech(speech: Speech) -> SpeechRecord:
    return SpeechRecord(
        text=speech.text,
        speaker=speech.speaker,
        party=speech.party,
        year=year_of(speech.date),
        topic=speech.topic,
        parliament="Bundestag",
        period=speech.period,
        chair=bool(PRESIDING_ROLES.match(speech.role)),
        interjection=speech.kind == "interjection",
        source_file=speech.source_file,
    )


_TXT_HEADER = re.compile(r"^(Sprecher|Sprecherin|Thema|Jahr|Partei)\s*:\s*(.*)$")
_SPEAKER_PARTY = re.compile(r"^(?P<name>.*?)\s*\((?P<party>[^()]+)\)\s*$")


def read_speech_txt(path: Path, text: str) -> SpeechRecord:
    """``Sprecher: Name (PARTEI)`` / ``Thema: …`` / ``Jahr: 2024``, a blank line, then the speech."""
    head, _, body = text.strip().partition("\n\n")
    fields: dict[str, str] = {}
    for line in head.split("\n"):
        match = _TXT_HEADER.match(line.strip())
        if match is None:
            raise DataError(
                f"header line {line.strip()!r} is not 'Sprecher:', 'Thema:', 'Jahr:' or 'Partei:'", path=path
            )
        fields[match[1].lower().removesuffix("in")] = match[2].strip()
    if "sprecher" not in fields or not body.strip():
        raise DataError("expected a 'Sprecher:' header, a blank line and the speech text", path=path)
    speaker, party = fields["sprecher"], fields.get("partei", "")
    if (match := _SPEAKER_PARTY.match(speaker)) is not None:
        speaker, party = match["name"], party or match["party"]
    return SpeechRecord(
        text=body.strip(),
        speaker=speaker,
        party=normalize_party(party) or party,
        year=year_of(fields.get("jahr")),
        topic=fields.get("thema", ""),
        source_file=str(path),
    )


@dataclass(frozen=True)
class SniffedFile:
    path: Path
    encoding: str
    sha256: str


def sniff_file(path: Path, encoding: str | None) -> SniffedFile:
    """Hash a file in chunks, check it is text, and find its encoding, never holding it whole.

    UTF-8 is checked over the whole file; a file that is not valid UTF-8 gets the legacy encoding
    detected on the first block that fails (``decode_bytes``: charset-normalizer + strict decode).
    """
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DataError(f"unknown encoding {encoding!r}", key="prepare.encoding") from None
    digest = hashlib.sha256()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    failing: bytes | None = None
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
        if not head.strip():
            raise DataError("file is empty", path=path)
        if b"\x00" in head:
            raise DataError("file looks binary (contains NUL bytes), expected text", path=path)
        for block in _blocks(head, handle):
            digest.update(block)
            if encoding is None and failing is None:
                try:
                    utf8.decode(block)
                except UnicodeDecodeError:
                    failing = block
    if encoding is None:
        if failing is None:
            encoding = "utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8"
        else:
            encoding = decode_bytes(failing, path).encoding
    return SniffedFile(path, encoding, digest.hexdigest())


def _blocks(head: bytes, handle: Any) -> Iterator[bytes]:
    yield head
    yield from iter(lambda: handle.read(1 << 20), b"")


RowMapper = Callable[[Mapping[str, str], SniffedFile, int, ReadStats], SpeechRecord | None]


def iter_csv_rows(
    source: SniffedFile, required: list[str], delimiter: str | None = None
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row; missing required columns are an error naming them."""
    try:
        with source.path.open(encoding=source.encoding, newline="") as handle:
            sample = handle.read(_SNIFF_BYTES)
            handle.seek(0)
            if delimiter is None:
                try:
                    delimiter = csv.Sniffer().sniff(sample.split("\n", 1)[0], delimiters=",;\t").delimiter
                except csv.Error:
                    delimiter = ","
            reader = csv.DictReader(handle, delimiter=delimiter)
            header = reader.fieldnames or []
            missing = [column for column in required if column not in header]
            if missing:
                raise DataError(
                    f"missing column(s) {', '.join(missing)} (the file has: {', '.join(header) or 'no header'}); "
                    "map them with prepare.columns",
                    path=source.path,
                )
            for row in reader:
                yield reader.line_num, row
    except UnicodeDecodeError as exc:
        raise DataError(
            f"not valid {source.encoding} ({exc.reason} at byte {exc.start} of a read block); set prepare.encoding",
            path=source.path,
        ) from None


def checked_rows(
    source: SniffedFile, required: list[str], columns: ColumnsConfig, stats: ReadStats, policy: str
) -> Iterator[tuple[int, dict[str, str], int | None]]:
    """(line, row, legislative period) for every readable row; the others counted or refused (``policy``)."""
    for line, row in iter_csv_rows(source, required):
        stats.rows += 1
        problem = row_is_malformed(row)
        period_text = (row.get(columns.period or "") or "").strip()
        if problem is None and period_text and not period_text.isdigit():
            problem = f"period {period_text!r} is not a number"
        if problem is not None:
            stats.bad_row(f"line {line}: {problem}", policy, source.path)
            continue
        yield line, row, int(period_text) if period_text else None


def row_is_malformed(row: Mapping[Any, Any]) -> str | None:
    """DictReader puts extra fields under the key None and fills missing ones with None."""
    if None in row:
        return "more fields than the header"
    if any(value is None for value in row.values()):
        return "fewer fields than the header"
    return None


def normalized_text(value: str) -> str:
    return normalize_text(value).strip()


def read_csv_file(source: SniffedFile, columns: ColumnsConfig, stats: ReadStats, policy: str) -> Iterator[SpeechRecord]:
    """Any speech CSV, with ``prepare.columns`` naming the columns (``text`` required); streamed."""
    if columns.text is None:
        raise DataError(
            "format = 'csv' needs prepare.columns.text (the column with the speech)", key="prepare.columns.text"
        )
    for _, row, period in checked_rows(source, [columns.text], columns, stats, policy):
        party = (row.get(columns.party or "") or "").strip()
        yield SpeechRecord(
            text=normalized_text(row[columns.text]),
            speaker=(row.get(columns.speaker or "") or "").strip(),
            party=normalize_party(party) or party,
            year=year_of(row.get(columns.year or "") or row.get(columns.date or "")),
            topic=(row.get(columns.topic or "") or "").strip(),
            parliament=(row.get(columns.parliament or "") or "").strip(),
            period=period,
            chair=truthy(row.get(columns.chair or "")),
            interjection=truthy(row.get(columns.interjection or "")),
            source_file=str(source.path),
        )
