"""Build small SpeakGer-format speech CSVs from real Bundestag speeches and the real SpeakGer metadata."""

from __future__ import annotations

import csv
from pathlib import Path

from ml_playground.data_pipeline.sources.bundestag import parse_protocol
from ml_playground.data_pipeline.sources.normalize import normalize_text

COLUMNS = ["Period", "Session", "Chair", "Interjection", "MPID", "Party", "Constituency", "Date", "Speech"]


def meta_ids_by_name(speakger_dir: Path) -> dict[str, str]:
    with (speakger_dir / "all_mps_meta.csv").open(encoding="utf-8", newline="") as handle:
        return {row["Name"]: row["MPID"] for row in csv.DictReader(handle, delimiter=";")}


def speakger_rows(shared_data: Path, protocol: str = "19009.txt") -> list[dict[str, str]]:
    """One row per speech of a real protocol; MPIDs looked up by name in the real metadata (where found)."""
    text = normalize_text((shared_data / "bundestag" / protocol).read_text("utf-8-sig"))
    ids = meta_ids_by_name(shared_data / "speakger")
    rows = []
    for speech in parse_protocol(text, protocol, "keep").speeches:
        name = speech.speaker.removeprefix("Dr. ")
        rows.append(
            {
                "Period": str(speech.period),
                "Session": str(speech.session),
                "Chair": "1" if speech.role.endswith(("räsident", "räsidentin")) else "0",
                "Interjection": "0",
                "MPID": ids.get(name, ids.get(speech.speaker, "")),
                "Party": "",
                "Constituency": speech.constituency,
                "Date": speech.date,
                "Speech": speech.text,
            }
        )
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], encoding: str = "utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path
