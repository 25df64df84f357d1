"""SpeakGer speech CSVs joined with the real member metadata in ../shared/data/speakger."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from ml_playground.configuration.models import ColumnsConfig, FiltersConfig, PrepareConfig
from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.data_pipeline.sources.records import ReadStats, keep, sniff_file
from ml_playground.data_pipeline.sources.speakger import (
    MpMetadata,
    normalize_speakger_party,
    read_speakger_file,
    resolve_columns,
)
from ml_playground.data_pipeline.speeches import iter_records, read_conditions
from tests.speakger_helpers import speakger_rows, write_csv

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def metadata(shared_data: Path) -> MpMetadata:
    return MpMetadata.load(shared_data / "speakger")


def test_real_metadata_loads_with_its_problems_counted(metadata: MpMetadata) -> None:
    assert metadata.names["1"] == "Wilhelm Baessler"
    assert metadata.memberships[("222", 1)] == ("SPD", "Baden-Württemberg")
    assert metadata.bad_rows > 1000  # the mapping has rows with missing fields
    assert any("unreadable metadata row" in note for note in metadata.notes)
    assert metadata.duplicated_ids == 0


def test_duplicated_ids_keep_the_first_entry(tmp_path: Path, shared_data: Path) -> None:
    lines = (shared_data / "speakger" / "all_mps_meta.csv").read_text("utf-8").splitlines()
    (tmp_path / "all_mps_meta.csv").write_text(
        "\n".join([*lines[:3], lines[1].replace("Wilhelm Baessler", "Someone Else")])
    )
    (tmp_path / "all_mps_mapping.csv").write_text((shared_data / "speakger" / "all_mps_mapping.csv").read_text("utf-8"))
    loaded = MpMetadata.load(tmp_path)
    assert loaded.duplicated_ids == 1
    assert loaded.names["1"] == "Wilhelm Baessler"


@pytest.mark.parametrize(
    ("raw", "parliament", "party"),
    [
        ("cdu", "Bundestag", "CDU/CSU"),
        ("csu", "Bundestag", "CDU/CSU"),
        ("cdu", "Hessen", "CDU"),
        ("die grünen", "", "BÜNDNIS 90/DIE GRÜNEN"),
        ("linke/pds/sed", "", "DIE LINKE"),
        ("other", "", ""),
        (None, "", ""),
        ("piraten", "", "PIRATEN"),
    ],
)
def test_party_spellings(raw: str | None, parliament: str, party: str) -> None:
    assert normalize_speakger_party(raw, parliament) == party


def test_join_with_missing_and_partyless_ids_and_bad_rows(
    tmp_path: Path, shared_data: Path, metadata: MpMetadata
) -> None:
    rows = speakger_rows(shared_data)
    rows[0] = {**rows[0], "MPID": "99999999"}  # not in the metadata
    rows[1] = {**rows[1], "Period": "zwei"}  # malformed
    path = write_csv(tmp_path / "Bundestag.csv", rows)
    with path.open("a", encoding="utf-8") as handle:
        handle.write('19,9,0,0,17881,,,2018-01-22,"text",EXTRA\n')  # one field too many
    stats = ReadStats()
    records = list(
        read_speakger_file(sniff_file(path, None), resolve_columns(ColumnsConfig()), metadata, stats, "skip")
    )
    assert stats.rows == len(rows) + 1
    assert stats.malformed == 2
    assert len(records) == len(rows) - 1
    schaeuble = [r for r in records if r.speaker == "Wolfgang Schäuble"]
    assert schaeuble
    assert all(r.party == "CDU/CSU" and r.parliament == "Bundestag" and r.chair and r.year == 2018 for r in schaeuble)
    assert records[0].speaker == ""  # unknown MPID: kept, unnamed, and reported
    assert any("MPID(s) not in all_mps_meta.csv (for example 99999999" in note for note in stats.notes)
    assert any("with no party" in note for note in stats.notes)
    with pytest.raises(
        DataError, match=r"Bundestag\.csv: line \d+: period 'zwei' is not a number; set prepare\.malformed"
    ):
        list(
            read_speakger_file(sniff_file(path, None), resolve_columns(ColumnsConfig()), metadata, ReadStats(), "error")
        )


def test_missing_columns_are_named(tmp_path: Path, metadata: MpMetadata) -> None:
    path = tmp_path / "x.csv"
    path.write_text("MPID,Rede\n1,Hallo\n")
    with pytest.raises(DataError, match=r"x\.csv: missing column\(s\) Speech \(the file has: MPID, Rede\)"):
        list(
            read_speakger_file(sniff_file(path, None), resolve_columns(ColumnsConfig()), metadata, ReadStats(), "skip")
        )
    mapped = resolve_columns(ColumnsConfig(text="Rede"))
    assert [r.text for r in read_speakger_file(sniff_file(path, None), mapped, metadata, ReadStats(), "skip")] == [
        "Hallo"
    ]


def test_windows_1252_csv_is_detected(tmp_path: Path, shared_data: Path, metadata: MpMetadata) -> None:
    path = write_csv(tmp_path / "legacy.csv", speakger_rows(shared_data)[:5], encoding="cp1252")
    source = sniff_file(path, None)
    assert source.encoding == "cp1252"
    texts = [
        r.text for r in read_speakger_file(source, resolve_columns(ColumnsConfig()), metadata, ReadStats(), "skip")
    ]
    assert any("ä" in t or "ü" in t for t in texts)
    assert not any("Ã" in t for t in texts)


def test_streaming_a_large_csv_keeps_memory_bounded(tmp_path: Path, shared_data: Path, metadata: MpMetadata) -> None:
    rows = speakger_rows(shared_data)
    path = tmp_path / "big.csv"
    write_csv(path, rows)
    with path.open("a", encoding="utf-8", newline="") as handle:
        body = path.read_text("utf-8").split("\n", 1)[1]
        while path.stat().st_size < 40_000_000:
            handle.write(body)
    filters = FiltersConfig(parties=["FDP"])
    stats = ReadStats()
    tracemalloc.start()
    try:
        source = sniff_file(path, None)
        kept = sum(
            1
            for r in read_speakger_file(source, resolve_columns(ColumnsConfig()), metadata, stats, "skip")
            if keep(r, filters, stats) is not None
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats.rows > 1000
    assert kept > 0
    assert peak < 8_000_000  # a 40 MB file, read row by row


def test_prepare_speakger_end_to_end_with_filters_and_summary(tmp_path: Path, shared_data: Path) -> None:
    folder = tmp_path / "csv"
    folder.mkdir()
    write_csv(
        folder / "Bundestag.csv", speakger_rows(shared_data, "19009.txt") + speakger_rows(shared_data, "19001.txt")
    )
    config = PrepareConfig(
        input_path=str(folder),
        dataset_dir=tmp_path / "ds",
        format="speakger",
        metadata_dir=shared_data / "speakger",
        conditioning="header",
        tokenizer="bpe",
        bpe_vocab_size=600,
        filters=FiltersConfig(drop_chair=True, min_length=100),
    )
    report = prepare(config)
    summary = report.summary()
    assert "per party: " in summary
    assert "per decade: 2010s" in summary
    assert "dropped: chair" in summary
    records = list(iter_records(tmp_path / "ds"))
    assert records
    assert not any(r.chair for r in records)
    assert all(len(r.text) >= 100 for r in records)
    conditions = read_conditions(tmp_path / "ds")
    assert "CDU/CSU" in conditions["parties"]
    corpus = (tmp_path / "ds" / "corpus.txt").read_text("utf-8")
    assert corpus.startswith(("<|speaker|>", "<|year|>"))  # a guest speaker without MPID has no name
    assert corpus.count("<|speaker|>") >= 0.7 * len(records)
    assert prepare(config).skipped
    with pytest.raises(DataError, match=r"needs prepare\.metadata_dir"):
        prepare(config.model_copy(update={"metadata_dir": None, "dataset_dir": tmp_path / "other"}))
