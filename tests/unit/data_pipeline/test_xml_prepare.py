"""``prepare.format = "bundestag_xml"`` on a small archive of two real sessions: with and without a header."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from ml_playground.configuration.models import FiltersConfig, PrepareConfig
from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.batches import open_dataset
from ml_playground.data_pipeline.meta import read_meta
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.data_pipeline.sources.records import PRESIDING_ROLES

pytestmark = pytest.mark.unit


def xml_config(tmp_path: Path, archive: Path, **extra: object) -> PrepareConfig:
    return PrepareConfig(
        input_path=str(archive),
        dataset_dir=tmp_path / "ds",
        format="bundestag_xml",
        interjections="strip",
        **extra,  # type: ignore[arg-type]
    )


def test_protocols_become_a_speeches_table_and_a_corpus_of_speaker_lines(tmp_path: Path, xml_archive: Path) -> None:
    report = prepare(xml_config(tmp_path, xml_archive, tokenizer="char", filters=FiltersConfig(drop_chair=True)))
    out = tmp_path / "ds"
    rows = [json.loads(line) for line in (out / "speeches.jsonl").read_text("utf-8").splitlines()]
    assert rows
    assert not any(PRESIDING_ROLES.match(r["role"]) for r in rows)  # (a guest "Präsident der …" stays)
    assert {r["session"] for r in rows} == {8, 9}
    assert all(r["speaker_line"] and r["source_file"].endswith("-data.xml") for r in rows)
    header = (out / "speeches.csv").read_text("utf-8").splitlines()[0]
    assert header.startswith("speaker,role,party,session,date,text,source_file,period")
    corpus = (out / "corpus.txt").read_text("utf-8")
    assert corpus.startswith(rows[0]["speaker_line"] + "\n" + rows[0]["text"] + "\n\n")
    assert "dropped: chair" in report.summary()
    assert read_meta(out)["train_tokens"] + read_meta(out)["val_tokens"] == len(corpus)
    assert prepare(xml_config(tmp_path, xml_archive, tokenizer="char", filters=FiltersConfig(drop_chair=True))).skipped


def test_header_conditioned_records_carry_topics_and_a_record_index(tmp_path: Path, xml_archive: Path) -> None:
    config = xml_config(
        tmp_path,
        xml_archive,
        conditioning="header",
        tokenizer="bpe",
        bpe_vocab_size=400,
        filters=FiltersConfig(drop_chair=True, min_length=200),
    )
    prepare(config)
    records = [json.loads(line) for line in (tmp_path / "ds" / "records.jsonl").read_text("utf-8").splitlines()]
    assert sum(bool(r["topic"]) for r in records) / len(records) > 0.8
    assert all(len(r["text"]) >= 200 and r["parliament"] == "Bundestag" and r["period"] == 19 for r in records)
    dataset = open_dataset(tmp_path / "ds")
    assert dataset.train_index is not None
    assert dataset.val_index is not None
    assert len(dataset.train_index) + len(dataset.val_index) == len(records)
    conditions = json.loads((tmp_path / "ds" / "conditions.json").read_text("utf-8"))
    assert conditions["years"] == [2018]
    assert "Christian Lindner" in conditions["speakers"]


def broken_archive(tmp_path: Path, good: bytes) -> Path:
    path = tmp_path / "mixed.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("wp19/19009-data.xml", good), ("wp19/19999-data.xml", b"<dbtplenarprotokoll><p>")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_malformed_session_is_counted_or_refused(tmp_path: Path, xml_sessions: dict[str, bytes]) -> None:
    archive = broken_archive(tmp_path, xml_sessions["19009"])
    report = prepare(xml_config(tmp_path, archive, tokenizer="char"))
    assert any("1 malformed" in w and "19999-data.xml" in w for w in report.warnings)
    with pytest.raises(DataError, match=r"19999-data\.xml: line 1, column \d+: not well-formed XML"):
        prepare(
            xml_config(tmp_path, archive, tokenizer="char", malformed="error").model_copy(
                update={"dataset_dir": tmp_path / "other"}
            )
        )
    assert not (tmp_path / "other" / "meta.json").exists()


def test_the_source_stage_renders_xml_protocols_as_speaker_lines(tmp_path: Path, xml_archive: Path) -> None:
    """What ``eval --data`` reads is what prepare wrote to ``corpus.txt``: speaker line, text, blank line."""
    from ml_playground.data_pipeline.corpus import corpus_text
    from ml_playground.data_pipeline.speeches import iter_speeches

    config = xml_config(tmp_path, xml_archive)
    prepare(config)
    first = next(iter_speeches(config.dataset_dir / "speeches.jsonl"))
    text = corpus_text(config)
    assert text.startswith(f"{first['speaker_line']}\n{first['text']}\n\n")
    assert text == (config.dataset_dir / "corpus.txt").read_text("utf-8")


def test_records_without_a_header_are_prepared_as_plain_speeches(tmp_path: Path) -> None:
    import csv

    path = tmp_path / "speeches.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Rede", "Partei", "Name"])
        for number in range(30):
            writer.writerow([f"Rede Nummer {number}: Wir wollen mehr Bahn und weniger Stau.", "SPD", f"Name {number}"])
    config = PrepareConfig(
        input_path=str(path),
        dataset_dir=tmp_path / "ds",
        format="csv",
        columns={"text": "Rede", "party": "Partei", "speaker": "Name"},  # type: ignore[arg-type]
    )
    report = prepare(config)
    assert "per party: SPD 30" in report.summary()
    corpus = (tmp_path / "ds" / "corpus.txt").read_text("utf-8")
    assert corpus.startswith("Rede Nummer 0: Wir wollen mehr Bahn und weniger Stau.\n\nRede Nummer 1")
    conditions = json.loads((tmp_path / "ds" / "conditions.json").read_text("utf-8"))
    assert conditions["parties"] == {"SPD": 30}
    assert conditions["conditioning"] == "none"
    assert len((tmp_path / "ds" / "records.jsonl").read_text("utf-8").splitlines()) == 30
