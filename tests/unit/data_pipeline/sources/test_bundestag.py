"""Protocol parsing on real excerpts of ``../shared/data/bundestag/19009.txt`` (and synthetic edge cases)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.data_pipeline.sources.bundestag import (
    NotAProtocolError,
    SpeakerLine,
    normalize_party,
    parse_protocol,
    parse_speaker_line,
)
from ml_playground.data_pipeline.sources.normalize import normalize_text

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def session_9(shared_data: Path) -> list[str]:
    raw = (shared_data / "bundestag" / "19009.txt").read_text("utf-8-sig")
    return normalize_text(raw).split("\n")


def excerpt(lines: list[str], *, inject_layout: bool = False) -> str:
    """Title block, contents and 'Beginn' (lines 1-62), the last two speeches and the close (521-end)."""
    head, tail = lines[:62], lines[520:]
    if inject_layout:  # what PDF-derived protocols add inside the body
        at = tail.index("  Jürgen Hardt (CDU/CSU): ")
        header = "Deutscher Bundestag – 19. Wahlperiode – 9. Sitzung. Berlin, Montag, den 22. Januar 2018"
        tail = [*tail[:at], "(C)", header, "(D)", *tail[at:]]
    return "\n".join(head + tail)


def test_real_excerpt_splits_into_exact_speeches(session_9: list[str]) -> None:
    protocol = parse_protocol(excerpt(session_9), "19009.txt", interjections="strip")
    assert (protocol.period, protocol.session, protocol.date) == (19, 9, "2018-01-22")
    got = [(s.speaker, s.role, s.party, s.kind) for s in protocol.speeches]
    assert got == [
        ("Dr. Wolfgang Schäuble", "Präsident", "", "speech"),
        ("Jürgen Hardt", "", "CDU/CSU", "speech"),
        ("Dr. Wolfgang Schäuble", "Präsident", "", "speech"),
    ]
    first, hardt, closing = protocol.speeches
    assert first.text == "Letzter Redner in dieser Debatte ist der Kollege Jürgen Hardt, CDU/CSU-Fraktion."
    body = [line.strip() for line in session_9[526:541] if not line.startswith("(")]
    assert hardt.text == "\n".join(" ".join(line.split()) for line in body)
    assert "Es wäre schön, wenn das nicht nur in Deutschland so gesehen wird" in hardt.text  # after an interjection
    assert closing.text.endswith("Die Sitzung ist geschlossen.")
    assert "Beifall" not in hardt.text + closing.text
    assert all(s.source_file == "19009.txt" for s in protocol.speeches)
    # contents before 'Beginn' and the annex after 'Schluss' are gone
    assert "Liste der entschuldigten Abgeordneten" not in "".join(s.text for s in protocol.speeches)
    assert protocol.dropped_lines["table of contents"] == 58
    assert protocol.dropped_lines["before the first speaker"] == 1  # "Herzlichen Dank." of the cut speech


def test_page_headers_and_margin_markers_are_dropped(session_9: list[str]) -> None:
    plain = parse_protocol(excerpt(session_9), "19009.txt")
    laid_out = parse_protocol(excerpt(session_9, inject_layout=True), "19009.txt")
    assert [s.text for s in laid_out.speeches] == [s.text for s in plain.speeches]
    assert laid_out.dropped_lines["page headers"] == 1
    assert laid_out.dropped_lines["margin markers"] == 2


def test_interjections_keep_strip_separate(session_9: list[str]) -> None:
    text = excerpt(session_9)
    kept = parse_protocol(text, "19009.txt", "keep").speeches
    stripped = parse_protocol(text, "19009.txt", "strip").speeches
    separate = parse_protocol(text, "19009.txt", "separate").speeches
    assert "(Beifall bei Abgeordneten der FDP)" in kept[1].text
    assert "(Beifall" not in stripped[1].text
    assert [s.text for s in separate if s.kind == "speech"] == [s.text for s in stripped]
    interjections = [s for s in separate if s.kind == "interjection"]
    assert interjections[0].text == "(Beifall bei der CDU/CSU)"
    assert interjections[0].speaker == ""
    assert len(interjections) == 8
    # an interjection record follows the speech it interrupted
    kinds = [s.kind for s in separate]
    assert kinds[:3] == ["speech", "interjection", "speech"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Carsten Schneider (Erfurt) (SPD):", SpeakerLine("Carsten Schneider", "", "SPD", "Erfurt")),
        ("Präsident Dr. Wolfgang Schäuble:", SpeakerLine("Dr. Wolfgang Schäuble", "Präsident", "", "")),
        (
            "Vizepräsidentin Dr. h. c. Edelgard Bulmahn:",
            SpeakerLine("Dr. h. c. Edelgard Bulmahn", "Vizepräsidentin", "", ""),
        ),
        ("Alterspräsident Dr. Hermann Otto Solms:", SpeakerLine("Dr. Hermann Otto Solms", "Alterspräsident", "", "")),
        ("Dr. Angela Merkel, Bundeskanzlerin:", SpeakerLine("Dr. Angela Merkel", "Bundeskanzlerin", "", "")),
        (
            "Dr. Ole Schröder, Parl. Staatssekretär beim Bundesminister des Innern:",
            SpeakerLine("Dr. Ole Schröder", "Parl. Staatssekretär beim Bundesminister des Innern", "", ""),
        ),
        (
            "François de Rugy, Präsident der Assemblée nationale:",
            SpeakerLine("François de Rugy", "Präsident der Assemblée nationale", "", ""),
        ),
        ("Dr. Frauke Petry (fraktionslos):", SpeakerLine("Dr. Frauke Petry", "", "fraktionslos", "")),
        (
            "Dr. Anton Hofreiter (BÜNDNIS 90/DIE GRÜNEN):",
            SpeakerLine("Dr. Anton Hofreiter", "", "BÜNDNIS 90/DIE GRÜNEN", ""),
        ),
        ("Ich zitiere:", None),
        ("Überweisungsvorschlag:", None),
        ("Die andere Frage lautete:", None),
        ("Ich zitiere die Forscher der Bertelsmann-Studie:", None),
        ("(Zuruf von der AfD: Aha!)", None),
        ("ZP 2 Aktuelle Stunde auf Verlangen der Fraktion DIE LINKE:", None),
        ("Herr Oppermann, sagen Sie doch einmal:", None),
    ],
)
def test_speaker_lines(line: str, expected: SpeakerLine | None) -> None:
    assert parse_speaker_line(line) == expected


@pytest.mark.parametrize(
    ("raw", "party"),
    [
        ("BÜNDNIS 90/DIE GRÜNEN", "BÜNDNIS 90/DIE GRÜNEN"),
        ("BÜNDNIS\u00a090/\nDIE GRÜNEN", "BÜNDNIS 90/DIE GRÜNEN"),
        ("BÜNDNIS 90/ DIE GRÜNEN", "BÜNDNIS 90/DIE GRÜNEN"),
        ("DIE\nLINKE", "DIE LINKE"),
        ("CDU / CSU", "CDU/CSU"),
        ("AFD", "AfD"),
        ("Piraten", None),
    ],
)
def test_party_names_are_normalised(raw: str, party: str | None) -> None:
    assert normalize_party(raw) == party


def test_a_speaker_line_broken_across_lines_is_joined(session_9: list[str]) -> None:
    lines = excerpt(session_9).split("\n")
    at = lines.index("  Jürgen Hardt (CDU/CSU): ")
    lines[at : at + 1] = ["  Dr. Franziska Brantner (BÜNDNIS 90/", "DIE GRÜNEN):"]
    speeches = parse_protocol("\n".join(lines), "19009.txt").speeches
    assert (speeches[1].speaker, speeches[1].party) == ("Dr. Franziska Brantner", "BÜNDNIS 90/DIE GRÜNEN")


def test_procedural_lines_between_speeches_are_dropped() -> None:
    text = "\n".join(
        [
            "Deutscher Bundestag",
            "Stenografischer Bericht",
            "3. Sitzung",
            "Berlin, Mittwoch, den 22. November 2017",
            "Beginn: 12.30 Uhr",
            "  Präsidentin Dr. Erika Muster:",
            "  Ich rufe den Tagesordnungspunkt 1 auf:",
            "1.\tBeratung des Antrags der Fraktion der SPD",
            "Gute Arbeit für alle",
            "Drucksache 19/123",
            "  Das Wort hat Max Muster.",
            "  Max Muster (SPD):",
            "  Danke.",
            "(Schluss: 13.00 Uhr)",
        ]
    )
    protocol = parse_protocol(text, "p.txt")
    assert protocol.period is None
    assert [s.text for s in protocol.speeches] == [
        "Ich rufe den Tagesordnungspunkt 1 auf:\nDas Wort hat Max Muster.",
        "Danke.",
    ]
    assert protocol.speeches[0].role == "Präsidentin"
    assert protocol.dropped_lines["procedural lines"] == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Ein Brief an die Abgeordneten.\nMit freundlichen Grüßen", "no 'Beginn:' line"),
        ("Notizen\nBeginn: 9.00 Uhr\nText", "no protocol title block"),
    ],
)
def test_text_that_is_not_a_protocol(text: str, message: str) -> None:
    with pytest.raises(NotAProtocolError, match=message) as info:
        parse_protocol(text, "notes.txt")
    assert "notes.txt" in str(info.value)
