"""``prepare.format = "bundestag"``: speeches table, clean corpus, summary, bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.errors import DataError
from ml_playground.core.tokenizer import UNKNOWN_CHAR, CharTokenizer, load_tokenizer
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.data_pipeline.speeches import REQUIRED_KEYS, iter_speeches

pytestmark = pytest.mark.unit


@pytest.fixture
def two_protocols(tmp_path: Path, shared_data: Path) -> Path:
    """Two real protocols, one re-encoded as Windows-1252 the way older protocols come."""
    folder = tmp_path / "protocols"
    folder.mkdir()
    (folder / "19009.txt").symlink_to(shared_data / "bundestag" / "19009.txt")
    text = (shared_data / "bundestag" / "19001.txt").read_text("utf-8-sig")
    (folder / "19001.txt").write_bytes(text.encode("cp1252", errors="replace"))
    return folder


def config(tmp_path: Path, input_path: Path, **extra: object) -> PrepareConfig:
    return PrepareConfig(
        input_path=str(input_path),
        dataset_dir=tmp_path / "ds",
        format="bundestag",
        **extra,  # type: ignore[arg-type]
    )


def test_speeches_table_corpus_and_summary(tmp_path: Path, two_protocols: Path) -> None:
    report = prepare(config(tmp_path, two_protocols))
    assert report.file_encodings == {
        str(two_protocols / "19001.txt"): "cp1252",
        str(two_protocols / "19009.txt"): "utf-8-sig",
    }
    records = list(iter_speeches(tmp_path / "ds" / "speeches.jsonl"))
    assert {r["session"] for r in records} == {1, 9}
    assert {r["date"] for r in records} == {"2017-10-24", "2018-01-22"}
    assert all(set(REQUIRED_KEYS) <= set(r) for r in records)
    president = [r for r in records if r["speaker"] == "Dr. Wolfgang Schäuble" and r["session"] == 9]
    assert president
    assert president[0]["role"] == "Präsident"
    with (tmp_path / "ds" / "speeches.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["text"] for row in rows] == [r["text"] for r in records]
    corpus = (tmp_path / "ds" / "corpus.txt").read_text("utf-8")
    assert corpus.startswith("Alterspräsident Dr. Hermann Otto Solms:\n")
    assert "Jürgen Hardt (CDU/CSU):\nMonsieur le Président!" in corpus
    assert not {"Ã", "\r", "\u00a0"} & set(corpus)
    summary = report.summary()
    assert "19001.txt: cp1252" in summary
    assert f"speeches: {len(records):,} kept of {len(records):,} read" in summary
    assert "speakers: " in summary
    assert "protocol lines that are no speech: annex" in summary
    assert "CDU/CSU" in summary
    assert "characters/token" in summary
    assert report.characters == len(corpus)


def test_not_a_protocol_falls_back_to_plain_text_or_errors(tmp_path: Path, two_protocols: Path) -> None:
    letter = two_protocols / "letter.txt"
    letter.write_text("Sehr geehrte Damen und Herren,\nanbei die Unterlagen.\n" * 20)
    report = prepare(config(tmp_path, two_protocols))
    assert any("letter.txt: not a plenary protocol" in w for w in report.warnings)
    assert "anbei die Unterlagen" in (tmp_path / "ds" / "corpus.txt").read_text("utf-8")
    with pytest.raises(DataError, match=r"letter.txt: no 'Beginn:' line.*prepare.non_protocol"):
        prepare(config(tmp_path / "strict", two_protocols, non_protocol="error"))


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"\x00\x01")
    with pytest.raises(DataError, match="no text files"):
        prepare(config(tmp_path, folder))
    (folder / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.txt: file is empty"):
        prepare(config(tmp_path, folder))
    (folder / "empty.txt").write_bytes(b"\x00PK binary")
    with pytest.raises(DataError, match=r"empty\.txt: file looks binary"):
        prepare(config(tmp_path, folder))
    assert not (tmp_path / "ds").exists()


def test_rare_characters_map_to_the_unknown_symbol(tmp_path: Path, two_protocols: Path) -> None:
    prepare(config(tmp_path, two_protocols, min_char_count=50))
    tokenizer = load_tokenizer(tmp_path / "ds" / "tokenizer")
    assert isinstance(tokenizer, CharTokenizer)
    assert tokenizer.unknown == UNKNOWN_CHAR
    assert tokenizer.decode(tokenizer.encode("Ǆ Straße")) == f"{UNKNOWN_CHAR} Straße"
    spec = json.loads((tmp_path / "ds" / "tokenizer" / "tokenizer.json").read_text("utf-8"))
    assert spec["unknown"] == UNKNOWN_CHAR
    corpus = (tmp_path / "ds" / "corpus.txt").read_text("utf-8")
    rare = {c for c in set(corpus) if corpus.count(c) < 50}
    assert rare
    assert not rare & set(tokenizer.chars) - {UNKNOWN_CHAR}


def test_changing_the_interjection_mode_reprepares(tmp_path: Path, two_protocols: Path) -> None:
    prepare(config(tmp_path, two_protocols))
    assert prepare(config(tmp_path, two_protocols)).skipped
    report = prepare(config(tmp_path, two_protocols, interjections="separate"))
    assert not report.skipped
    kinds = {r["kind"] for r in iter_speeches(tmp_path / "ds" / "speeches.jsonl")}
    assert kinds == {"speech", "interjection"}
    assert "(Beifall" not in (tmp_path / "ds" / "corpus.txt").read_text("utf-8")
