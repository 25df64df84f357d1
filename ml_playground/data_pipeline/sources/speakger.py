"""SpeakGer (Lange & Jentsch, 2023): speech CSVs joined on MPID with the member metadata.

``all_mps_meta.csv`` (semicolon-separated: MPID, Name, Born, SexOrGender, …) gives names;
``all_mps_mapping.csv`` (comma-separated: MPID, State, Period, Party, …) gives the party and
parliament of a member in a legislative period. Real metadata is messy: MPIDs without a mapping,
mapping rows without a party, rows with missing fields. The join keeps every speech it can and
counts what it could not resolve.

The speech files' column names default to SpeakGer's (``Speech``, ``MPID``, ``Period``,
``Party``, ``Chair``, ``Interjection``, ``Date``, ``State``); ``prepare.columns`` overrides any.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ml_playground.configuration.models import ColumnsConfig
from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.sources.records import (
    ReadStats,
    SniffedFile,
    SpeechRecord,
    checked_rows,
    iter_csv_rows,
    normalized_text,
    row_is_malformed,
    sniff_file,
    truthy,
    year_of,
)

META_FILE = "all_mps_meta.csv"
MAPPING_FILE = "all_mps_mapping.csv"
SPEAKGER_COLUMNS = ColumnsConfig(
    text="Speech",
    mpid="MPID",
    party="Party",
    period="Period",
    date="Date",
    parliament="State",
    chair="Chair",
    interjection="Interjection",
)
# SpeakGer writes parties in lower case; these are the Bundestag spellings used everywhere else.
_PARTIES = {
    "spd": "SPD",
    "cdu": "CDU",
    "csu": "CSU",
    "fdp": "FDP",
    "afd": "AfD",
    "die grünen": "BÜNDNIS 90/DIE GRÜNEN",
    "grüne": "BÜNDNIS 90/DIE GRÜNEN",
    "bündnis": "BÜNDNIS 90/DIE GRÜNEN",
    "bündnis 90/die grünen": "BÜNDNIS 90/DIE GRÜNEN",
    "linke/pds/sed": "DIE LINKE",
    "die linke": "DIE LINKE",
    "linke": "DIE LINKE",
    "fraktionslos": "fraktionslos",
}


def normalize_speakger_party(raw: str | None, parliament: str = "") -> str:
    """``cdu`` -> ``CDU`` (``CDU/CSU`` in the Bundestag, where they form one group), unknown ones upper-cased."""
    key = (raw or "").strip().lower()
    if not key or key in ("none", "other", "nan"):
        return ""
    party = _PARTIES.get(key, key.upper())
    if parliament == "Bundestag" and party in ("CDU", "CSU"):
        return "CDU/CSU"
    return party


def resolve_columns(columns: ColumnsConfig) -> ColumnsConfig:
    """The user's mapping where given, SpeakGer's names elsewhere."""
    given = columns.model_dump(exclude_none=True)
    return SPEAKGER_COLUMNS.model_copy(update=given)


@dataclass
class MpMetadata:
    names: dict[str, str]
    memberships: dict[tuple[str, int], tuple[str, str]]  # (MPID, period) -> (party, parliament)
    duplicated_ids: int = 0
    bad_rows: int = 0
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path) -> MpMetadata:
        names: dict[str, str] = {}
        duplicated = bad = 0
        for _, row in iter_csv_rows(sniff_file(folder / META_FILE, None), ["MPID", "Name"], delimiter=";"):
            mpid = (row.get("MPID") or "").strip()
            if not mpid or row_is_malformed(row) is not None:
                bad += 1
            elif mpid in names:
                duplicated += 1  # the first entry wins
            else:
                names[mpid] = (row.get("Name") or "").strip()
        memberships: dict[tuple[str, int], tuple[str, str]] = {}
        mapping = sniff_file(folder / MAPPING_FILE, None)
        for _, row in iter_csv_rows(mapping, ["MPID", "Period", "Party", "State"], delimiter=","):
            try:
                key = ((row.get("MPID") or "").strip(), int(row.get("Period") or ""))
            except ValueError:
                bad += 1
                continue
            if row_is_malformed(row) is not None:
                bad += 1
                continue
            state = (row.get("State") or "").strip()
            memberships.setdefault(key, (normalize_speakger_party(row.get("Party"), state), state))
        notes = []
        if duplicated:
            notes.append(f"{duplicated} duplicated MPID(s) in {META_FILE} (the first entry is used)")
        if bad:
            notes.append(f"{bad} unreadable metadata row(s) skipped")
        return cls(names, memberships, duplicated, bad, notes)

    @classmethod
    def load_from(cls, folder: Path | None) -> MpMetadata:
        if folder is None:
            raise DataError(
                "format = 'speakger' needs prepare.metadata_dir (with all_mps_meta.csv)", key="prepare.metadata_dir"
            )
        for name in (META_FILE, MAPPING_FILE):
            if not (folder / name).is_file():
                raise DataError(f"{name} not found", path=folder)
        return cls.load(folder)


def read_speakger_file(
    source: SniffedFile,
    columns: ColumnsConfig,
    metadata: MpMetadata,
    stats: ReadStats,
    policy: str,
) -> Iterator[SpeechRecord]:
    """Stream one speech CSV; every record joined with the metadata."""
    assert columns.text is not None
    assert columns.mpid is not None
    unknown_ids: Counter[str] = Counter()
    no_party = 0
    for _, row, period in checked_rows(source, [columns.text, columns.mpid], columns, stats, policy):
        mpid = row[columns.mpid].strip()
        party_raw, parliament = "", (row.get(columns.parliament or "") or "").strip()
        if period is not None and (mpid, period) in metadata.memberships:
            party_raw, mapped_parliament = metadata.memberships[(mpid, period)]
            parliament = parliament or mapped_parliament
        parliament = parliament or source.path.stem
        # normalising is idempotent, so the mapping's (already normalised) party gets the speech's parliament
        party = normalize_speakger_party((row.get(columns.party or "") or "").strip() or party_raw, parliament)
        speaker = metadata.names.get(mpid, "")
        if not speaker:
            unknown_ids[mpid or "(empty)"] += 1
        if not party:
            no_party += 1
        yield SpeechRecord(
            text=normalized_text(row[columns.text]),
            speaker=speaker,
            party=party,
            year=year_of(row.get(columns.date or "")),
            parliament=parliament,
            period=period,
            chair=truthy(row.get(columns.chair or "")),
            interjection=truthy(row.get(columns.interjection or "")),
            source_file=str(source.path),
        )
    if unknown_ids:
        examples = ", ".join(sorted(unknown_ids, key=lambda mpid: (mpid == "(empty)", mpid))[:3])
        stats.notes.append(
            f"{source.path.name}: {sum(unknown_ids.values())} speech(es) by {len(unknown_ids)} MPID(s) not in "
            f"{META_FILE} (for example {examples}); kept without a speaker name"
        )
    if no_party:
        stats.notes.append(f"{source.path.name}: {no_party} speech(es) with no party in the file or the mapping")
