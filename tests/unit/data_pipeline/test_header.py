from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ml_playground.configuration.models import ColumnsConfig, FiltersConfig, PrepareConfig
from ml_playground.core.errors import ConfigError, DataError
from ml_playground.core.tokenizer import BpeTokenizer
from ml_playground.data_pipeline.header import (
    END_TOKEN,
    FIELD_TOKENS,
    SPECIAL_TOKENS,
    TEXT_TOKEN,
    format_example,
    parse_example,
)
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.data_pipeline.sources.records import ReadStats, SpeechRecord, keep, read_speech_txt
from ml_playground.data_pipeline.speeches import iter_records

pytestmark = pytest.mark.unit

value = st.text(
    alphabet=st.characters(blacklist_characters="<\n\r", blacklist_categories=["Cs", "Zl", "Zp", "Cc"]), max_size=30
)


@given(
    speaker=value,
    party=value,
    topic=value,
    year=st.one_of(st.none(), st.integers(1949, 2030)),
    text=st.text(max_size=200),
)
def test_header_round_trip(speaker: str, party: str, topic: str, year: int | None, text: str) -> None:
    fields = {"speaker": speaker, "party": party, "year": year, "topic": topic}
    parsed = parse_example(format_example(fields, text))
    if any(token in text for token in SPECIAL_TOKENS):
        return
    assert parsed is not None
    assert parsed.finished
    expected = {k: " ".join(str(v).split()) for k, v in fields.items() if v is not None and " ".join(str(v).split())}
    assert parsed.fields == expected
    assert parsed.text == text.strip()


def test_header_layout_and_unfinished_or_broken_examples() -> None:
    example = format_example(
        {"speaker": "Dr. Angela Merkel", "party": None, "year": 2019, "topic": "Klima<|end|>"}, " Danke. "
    )
    assert (
        example == f"{FIELD_TOKENS['speaker']}Dr. Angela Merkel{FIELD_TOKENS['year']}2019"
        f"{FIELD_TOKENS['topic']}Klima{TEXT_TOKEN}Danke.{END_TOKEN}\n"
    )
    unfinished = parse_example(f"{FIELD_TOKENS['party']}SPD{TEXT_TOKEN}Meine Damen")
    assert unfinished is not None
    assert not unfinished.finished
    assert parse_example("no header at all") is None
    assert parse_example(f"{TEXT_TOKEN}text {FIELD_TOKENS['party']}SPD more") is None  # a marker inside the text


def test_markers_are_single_special_tokens_of_the_bpe() -> None:
    corpus = [format_example({"speaker": "A B", "party": "SPD"}, "Sehr geehrte Damen und Herren " * 20)] * 20
    tokenizer = BpeTokenizer.train(corpus, 300, SPECIAL_TOKENS)
    ids = tokenizer.encode(f"{FIELD_TOKENS['party']}SPD{TEXT_TOKEN}")
    assert ids[0] == tokenizer.token_id(FIELD_TOKENS["party"])
    assert tokenizer.token_id(TEXT_TOKEN) in ids
    assert tokenizer.decode(ids) == f"{FIELD_TOKENS['party']}SPD{TEXT_TOKEN}"
    assert tokenizer.token_id("<|nope|>") is None


def test_example_speech_txt(shared_data: Path) -> None:
    path = shared_data / "speakger" / "example_speech.txt"
    record = read_speech_txt(path, path.read_text("utf-8"))
    assert (record.speaker, record.party, record.topic, record.year) == (
        "Max Mustermann",
        "BEISPIEL",
        "Beispielrede zur Pipelineprüfung",
        2024,
    )
    assert record.text.startswith("Meine Damen und Herren")
    with pytest.raises(DataError, match="not 'Sprecher:'"):
        read_speech_txt(path, "Redner: X\n\nText")
    with pytest.raises(DataError, match="expected a 'Sprecher:' header"):
        read_speech_txt(path, "Sprecher: X (SPD)\nThema: Y")


def test_filters_count_why_records_are_dropped() -> None:
    where = {"parliament": "Bundestag", "period": 19}
    records = [
        SpeechRecord("(Beifall)", interjection=True),
        SpeechRecord("Kurz.", party="SPD", year=2019, **where),  # type: ignore[arg-type]
        SpeechRecord("Eine lange Rede\n(Zuruf)\nmit Inhalt.", party="SPD", year=2019, **where),  # type: ignore[arg-type]
        SpeechRecord("Eine lange Rede von 1999.", party="SPD", year=1999, **where),  # type: ignore[arg-type]
        SpeechRecord("Vom Präsidium, lang genug.", party="SPD", year=2019, chair=True, **where),  # type: ignore[arg-type]
        SpeechRecord("Eine lange Rede im Landtag.", party="SPD", year=2019, parliament="Hessen", period=19),
        SpeechRecord("Eine lange Rede ohne Partei.", year=2019, **where),  # type: ignore[arg-type]
    ]
    filters = FiltersConfig(
        drop_interjections=True,
        drop_chair=True,
        min_length=10,
        parties=["SPD"],
        year_min=2000,
        year_max=2020,
        periods=[19],
        parliaments=["Bundestag"],
    )
    stats = ReadStats()
    kept = [r for record in records if (r := keep(record, filters, stats)) is not None]
    assert [r.text for r in kept] == ["Eine lange Rede\nmit Inhalt."]
    assert stats.dropped == {"interjection rows": 1, "too short": 1, "year": 1, "chair": 1, "parliament": 1, "party": 1}


def test_csv_format_with_a_column_mapping(tmp_path: Path) -> None:
    source = tmp_path / "reden.csv"
    source.write_text(
        "redner;fraktion;jahr;thema;inhalt\n"
        + "".join(f"Anna Beispiel;SPD;2020;Klima;Rede Nummer {i} über das Klima.\n" for i in range(30))
    )
    config = PrepareConfig(
        input_path=str(source),
        dataset_dir=tmp_path / "ds",
        format="csv",
        conditioning="header",
        tokenizer="bpe",
        bpe_vocab_size=300,
        columns=ColumnsConfig(text="inhalt", speaker="redner", party="fraktion", year="jahr", topic="thema"),
    )
    prepare(config)
    first = next(iter_records(tmp_path / "ds"))
    assert (first.speaker, first.party, first.year, first.topic) == ("Anna Beispiel", "SPD", 2020, "Klima")
    with pytest.raises(DataError, match=r"needs prepare\.columns\.text"):
        prepare(config.model_copy(update={"columns": ColumnsConfig(), "dataset_dir": tmp_path / "x"}))
    with pytest.raises(ConfigError, match="conditioning = 'header' needs tokenizer = 'bpe'"):
        prepare(config.model_copy(update={"tokenizer": "char", "dataset_dir": tmp_path / "y"}))
    with pytest.raises(ConfigError, match="needs records"):
        prepare(config.model_copy(update={"format": "text", "dataset_dir": tmp_path / "z"}))


def test_generation_stops_at_any_header_marker() -> None:
    from ml_playground.data_pipeline.header import header_stop_ids
    from ml_playground.sampling.debate import strip_markers

    corpus = [format_example({"speaker": "A B", "party": "SPD"}, "Sehr geehrte Damen und Herren " * 20)] * 20
    tokenizer = BpeTokenizer.train(corpus, 300, SPECIAL_TOKENS)
    assert header_stop_ids(tokenizer) == {tokenizer.token_id(token) for token in SPECIAL_TOKENS}
    assert len(header_stop_ids(tokenizer)) == len(SPECIAL_TOKENS)
    assert header_stop_ids(BpeTokenizer.train(["plain text " * 50], 280)) == set()
    assert strip_markers(f"Danke.{FIELD_TOKENS['party']}") == "Danke."
