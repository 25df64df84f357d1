"""Chat JSONL lines in both shapes, and every bad line refused with its file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.sources.bundestag import Speech
from ml_playground.data_pipeline.sources.bundestag_qa import ANSWER_MAX_CHARS, QaStats, first_answer, qa_conversations
from ml_playground.data_pipeline.sources.chat import read_chat_jsonl


def test_both_shapes_become_conversations() -> None:
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "Hallo?"}, {"role": "assistant", "content": "Ja."}]}),
        "",
        json.dumps({"prompt": "Wie spät?", "completion": "Zehn.", "id": 7}),
    ]
    found = list(read_chat_jsonl([(Path("c.jsonl"), "\n".join(lines))]))
    assert [c.messages for c in found] == [
        ({"role": "user", "content": "Hallo?"}, {"role": "assistant", "content": "Ja."}),
        ({"role": "user", "content": "Wie spät?"}, {"role": "assistant", "content": "Zehn."}),
    ]
    assert [c.source for c in found] == ["c.jsonl:1", "c.jsonl:3"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "line 2: not JSON"),
        ('{"text": "a speech"}', 'line 2: expected {"messages": [...]} or {"prompt": ..., "completion": ...}'),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "line 2: messages.0.role: Input should be"),
        (
            '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}',
            "line 2: messages: message 2 is an empty assistant turn",
        ),
        ('{"messages": [{"role": "user", "content": "x"}]}', "line 2: messages: the conversation has no assistant"),
        ('{"prompt": "x", "completion": ""}', "line 2: completion: the completion (the assistant turn) is empty"),
        ('{"prompt": "x"}', "line 2: completion: Field required"),
    ],
)
def test_a_bad_line_is_refused_with_file_and_line(line: str, problem: str) -> None:
    good = json.dumps({"prompt": "a", "completion": "b"})
    with pytest.raises(DataError) as error:
        list(read_chat_jsonl([(Path("data/chat.jsonl"), f"{good}\n{line}\n")]))
    assert problem in error.value.message
    assert str(error.value.path).endswith("chat.jsonl")


def speech(speaker: str, text: str, *, role: str = "", party: str = "SPD", topic: str = "Fragestunde") -> Speech:
    return Speech(speaker, role, party, 1, "2020-01-01", text, "19001-data.xml", 19, topic=topic)


QUESTION = "Frau Ministerin, wann legen Sie endlich den Entwurf für das neue Gesetz vor?"
ANSWER = "Wir legen den Entwurf im Herbst vor, nach der Abstimmung mit den Ländern."


def test_question_time_and_interposed_questions_become_pairs() -> None:
    chair = speech("Bärbel Bas", "Die nächste Frage stellt der Kollege Müller.", role="Präsidentin", party="")
    offer = speech("Bärbel Bas", "Gestatten Sie eine Zwischenfrage?", role="Präsidentin", party="", topic="Haushalt")
    speeches = [
        chair,
        speech("Hans Müller", QUESTION),
        speech("Anna Schmidt", ANSWER, role="Bundesministerin für Bildung", party=""),
        speech(
            "Eva Meier", "Ich beginne meine Rede zum Haushalt mit einem Dank an alle Beteiligten.", topic="Haushalt"
        ),
        offer,
        speech("Karl Weber", QUESTION, party="FDP", topic="Haushalt"),
        speech("Eva Meier", ANSWER + "\nNun weiter in meiner Rede." + " Lange Ausführungen." * 80, topic="Haushalt"),
        speech("Karl Weber", "Eine Bemerkung ohne Frage, aber lang genug, um gezählt zu werden.", topic="Haushalt"),
    ]
    stats = QaStats()
    pairs = list(qa_conversations(speeches, stats))
    assert [p.messages[1]["content"] for p in pairs] == [QUESTION, QUESTION]
    assert pairs[0].messages[0]["content"].endswith("Anna Schmidt, Bundesministerin für Bildung.")
    assert pairs[1].messages[0]["content"].endswith("Eva Meier (SPD).")
    assert pairs[1].messages[2]["content"].startswith(ANSWER)
    assert len(pairs[1].messages[2]["content"]) <= ANSWER_MAX_CHARS
    assert dict(stats.pairs) == {"question_time": 1, "interposed": 1}
    assert "question/answer pairs: 2 (question time 1, interposed questions 1)" in stats.details()[0]
    longer = list(qa_conversations(speeches, QaStats(), answer_max_chars=2000))  # prepare.answer_max_chars
    assert ANSWER_MAX_CHARS < len(longer[1].messages[2]["content"]) <= 2000  # the next paragraph fits now
    assert longer[0].messages[2]["content"] == pairs[0].messages[2]["content"]


def test_an_answer_is_its_leading_paragraphs_or_sentences() -> None:
    assert first_answer("Erstens.\nZweitens.", 100) == "Erstens.\nZweitens."
    assert first_answer("Erstens.\nZweitens ist lang.", 12) == "Erstens."
    assert first_answer("Eins. Zwei. Drei drei drei.", 12) == "Eins. Zwei."
    assert QaStats().details() == ["question/answer pairs: none"]


@pytest.mark.parametrize(
    ("settings", "key", "problem"),
    [
        ({"tokenizer": "char"}, "prepare.tokenizer", "the gpt family has no chat template of its own"),
        ({"tokenizer": "hf", "template": "{speaker}"}, "prepare.template", "leave prepare.template out"),
        ({"tokenizer": "hf", "conditioning": "header"}, "prepare.conditioning", "leave prepare.conditioning out"),
    ],
)
def test_chat_formats_refuse_what_does_not_apply_in_one_line(
    tmp_path: Path, settings: dict[str, str], key: str, problem: str
) -> None:
    from ml_playground.configuration.models import FiltersConfig, PrepareConfig
    from ml_playground.core.errors import ConfigError
    from ml_playground.data_pipeline.preparer import prepare

    config = PrepareConfig(input_path=str(tmp_path), dataset_dir=tmp_path / "out", format="chat", **settings)
    with pytest.raises(ConfigError) as error:
        prepare(config)
    assert error.value.key == key
    assert problem in error.value.message
    filtered = config.model_copy(
        update={"tokenizer": "hf", "filters": FiltersConfig(parties=["SPD"]), "template": None}
    )
    with pytest.raises(ConfigError, match=r"leave prepare\.filters out"):
        prepare(filtered.model_copy(update={"conditioning": "none"}))
    assert not (tmp_path / "out").exists()  # nothing written
