"""``prepare.filters`` on every format: applied where there are records, refused in one line where there are none.

Each case prepares real input with ``filters.parties`` set to one party and reads back what was
written: the kept texts are exactly that party's, and the summary counts what was dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ml_playground.configuration.models import ColumnsConfig, FiltersConfig, PrepareConfig
from ml_playground.core.errors import ConfigError
from ml_playground.data_pipeline.corpus import corpus_text
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm

pytestmark = pytest.mark.unit

SPEECHES = [
    ("Anna Alt", "SPD", "Sehr geehrte Damen und Herren, die Rente muss sicher bleiben. " * 3),
    ("Bernd Berg", "FDP", "Wir brauchen weniger Bürokratie und mehr Freiheit für alle. " * 3),
    ("Clara Corn", "SPD", "Gute Arbeit verdient einen guten Lohn in diesem Land. " * 3),
    ("Dieter Dorn", "FDP", "Die Schuldenbremse gilt, auch wenn es manchen nicht gefällt. " * 3),
]
KEPT = [text for _, party, text in SPEECHES if party == "SPD"]
DROPPED = [text for _, party, text in SPEECHES if party != "SPD"]


def write_jsonl(folder: Path) -> Path:
    path = folder / "speeches.jsonl"
    path.write_text(
        "".join(json.dumps({"speaker": s, "party": p, "text": t}, ensure_ascii=False) + "\n" for s, p, t in SPEECHES),
        "utf-8",
    )
    return path


def write_csv(folder: Path) -> Path:
    path = folder / "speeches.csv"
    path.write_text("speaker,party,text\n" + "".join(f'{s},{p},"{t}"\n' for s, p, t in SPEECHES), "utf-8")
    return path


def write_speech_txt(folder: Path) -> Path:
    out = folder / "txt"
    out.mkdir()
    for number, (speaker, party, text) in enumerate(SPEECHES):
        (out / f"{number}.txt").write_text(f"Sprecher: {speaker} ({party})\nJahr: 2020\n\n{text}\n", "utf-8")
    return out


INPUTS: dict[str, Callable[[Path], Path]] = {"jsonl": write_jsonl, "csv": write_csv, "speech_txt": write_speech_txt}


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny"), [t for _, _, t in SPEECHES], vocab_size=300)


def spd_only(tmp_path: Path, fmt: str, **extra: object) -> PrepareConfig:
    """``fmt``'s input of the four speeches, with ``prepare.filters`` keeping the SPD's."""
    return PrepareConfig(
        input_path=str(INPUTS[fmt](tmp_path)),
        dataset_dir=tmp_path / "ds",
        format=fmt,  # type: ignore[arg-type]
        val_fraction=0.4,
        filters=FiltersConfig(parties=["SPD"]),
        columns=ColumnsConfig(text="text", speaker="speaker", party="party"),
        **extra,  # type: ignore[arg-type]
    )


def corpus_of(config: PrepareConfig) -> str:
    return (config.dataset_dir / "corpus.txt").read_text("utf-8")


@pytest.mark.parametrize("fmt", sorted(INPUTS))
@pytest.mark.parametrize("tokenizer", ["char", "bpe-header", "hf"])
def test_records_of_other_parties_are_dropped(tmp_path: Path, fmt: str, tokenizer: str, tiny_tokenizer: Path) -> None:
    extra: dict[str, object] = {"tokenizer": tokenizer}
    if tokenizer == "bpe-header":
        extra = {"tokenizer": "bpe", "bpe_vocab_size": 300, "conditioning": "header"}
    elif tokenizer == "hf":
        extra["hf_tokenizer"] = str(tiny_tokenizer)
    config = spd_only(tmp_path, fmt, **extra)
    report = prepare(config)
    written = (
        (config.dataset_dir / "records.jsonl").read_text("utf-8") if tokenizer == "bpe-header" else corpus_of(config)
    )
    assert all(text.strip() in written for text in KEPT)
    assert not any(text.strip() in written for text in DROPPED)
    assert "party 2" in report.summary()


def test_bundestag_protocols_keep_only_the_asked_party(tmp_path: Path, shared_data: Path) -> None:
    config = PrepareConfig(
        input_path=str(shared_data / "bundestag" / "19001.txt"),
        dataset_dir=tmp_path / "ds",
        format="bundestag",
        filters=FiltersConfig(parties=["AfD"]),
    )
    report = prepare(config)
    rows = [json.loads(line) for line in (config.dataset_dir / "speeches.jsonl").read_text("utf-8").splitlines()]
    assert rows
    assert {row["party"] for row in rows} == {"AfD"}
    assert "(SPD):" not in corpus_of(config)
    assert "dropped: party " in report.summary()


def test_xml_protocols_with_a_pretrained_tokenizer_keep_only_the_asked_party(
    tmp_path: Path, xml_archive: Path, tiny_tokenizer: Path
) -> None:
    config = PrepareConfig(
        input_path=str(xml_archive),
        dataset_dir=tmp_path / "ds",
        format="bundestag_xml",
        tokenizer="hf",
        hf_tokenizer=str(tiny_tokenizer),
        filters=FiltersConfig(parties=["AfD"]),
    )
    report = prepare(config)
    corpus = corpus_of(config)
    assert "(AfD):" in corpus
    assert "(SPD):" not in corpus
    assert "(CDU/CSU):" not in corpus
    assert "dropped: party " in report.summary()


def test_filters_that_would_keep_nothing_name_the_filters(tmp_path: Path) -> None:
    config = PrepareConfig(
        input_path=str(write_jsonl(tmp_path)),
        dataset_dir=tmp_path / "ds",
        format="jsonl",
        filters=FiltersConfig(parties=["Piraten"]),
    )
    with pytest.raises(Exception, match=r"prepare\.filters") as info:
        prepare(config)
    assert "left after filtering" in str(info.value)
    assert not (tmp_path / "ds" / "train.bin").exists()


@pytest.mark.parametrize("key", ["filters", "template"])
def test_plain_text_refuses_filters_and_templates(tmp_path: Path, shakespeare_slice: Path, key: str) -> None:
    setting: dict[str, object] = (
        {"filters": FiltersConfig(parties=["SPD"])} if key == "filters" else {"template": "{speaker}:\n"}
    )
    config = PrepareConfig(
        input_path=str(shakespeare_slice),
        dataset_dir=tmp_path / "ds",
        tokenizer="hf" if key == "template" else "char",
        hf_tokenizer="unused" if key == "template" else None,
        **setting,  # type: ignore[arg-type]
    )
    with pytest.raises(ConfigError, match=rf"prepare\.{key}") as info:
        prepare(config)
    assert "format 'text'" in str(info.value)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("fmt", sorted(INPUTS))
def test_eval_data_reads_through_the_same_source_stage_as_prepare(tmp_path: Path, fmt: str) -> None:
    """``eval --data`` on a file of the experiment's format scores the text prepare made of it, filtered alike."""
    config = spd_only(tmp_path, fmt)
    prepare(config)
    assert corpus_text(config) == corpus_of(config)
    assert not any(text.strip() in corpus_text(config) for text in DROPPED)
