"""The XML protocol reader on real sessions (19/8, 19/9) and on the ways real files go wrong."""

from __future__ import annotations

import difflib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.sources.bundestag import Speech, parse_protocol
from ml_playground.data_pipeline.sources.bundestag_xml import (
    MalformedXmlError,
    XmlDocument,
    group_of,
    iter_documents,
    list_xml_inputs,
    parse_session,
)
from ml_playground.data_pipeline.sources.normalize import normalize_text
from ml_playground.data_pipeline.sources.records import PRESIDING_ROLES
from tests.conftest import XML_SESSIONS, xml_members

pytestmark = pytest.mark.unit


def session(xml_sessions: dict[str, bytes], number: str, mode: str = "strip") -> list[Speech]:
    return parse_session(XmlDocument(f"{number}-data.xml", xml_sessions[number]), mode).speeches  # type: ignore[arg-type]


def test_session_metadata_and_the_first_speeches(xml_sessions: dict[str, bytes]) -> None:
    speeches = session(xml_sessions, "19009")
    first = speeches[0]
    assert (first.period, first.session, first.date) == (19, 9, "2018-01-22")
    assert all(s.source_file == "19009-data.xml" for s in speeches)
    members = [s for s in speeches if s.party]
    groups = {"CDU/CSU", "SPD", "AfD", "FDP", "DIE LINKE", "BÜNDNIS 90/DIE GRÜNEN"}
    assert {s.party for s in members} == {*groups, "fraktionslos"}
    assert all(s.speaker_id.isdigit() for s in members)
    assert all(s.text and "\n\n" not in s.text for s in speeches)


def test_chair_turns_are_records_of_their_own(xml_sessions: dict[str, bytes]) -> None:
    speeches = session(xml_sessions, "19009")
    chair = [s for s in speeches if PRESIDING_ROLES.match(s.role)]
    assert chair, "the chair speaks inside reden in every session"
    assert all(not s.party for s in chair)
    assert {s.role for s in chair} <= {"Präsident", "Präsidentin", "Vizepräsident", "Vizepräsidentin"}
    # the chair's words ("Vielen Dank", "Das Wort hat ...") are never inside a member's speech
    for speech in speeches:
        if not PRESIDING_ROLES.match(speech.role):
            assert "Das Wort hat" not in speech.text.split("\n")[-1]


def test_interjection_modes(xml_sessions: dict[str, bytes]) -> None:
    kept = session(xml_sessions, "19009", "keep")
    stripped = session(xml_sessions, "19009", "strip")
    separate = session(xml_sessions, "19009", "separate")
    assert any("(Beifall" in s.text for s in kept)
    assert not any("(Beifall" in s.text for s in stripped)
    interjections = [s for s in separate if s.kind == "interjection"]
    assert interjections
    assert all(s.text.startswith("(") and not s.speaker for s in interjections)
    assert [s.text for s in separate if s.kind == "speech"] == [s.text for s in stripped]


def test_topics_come_from_the_agenda_items(xml_sessions: dict[str, bytes]) -> None:
    speeches = session(xml_sessions, "19008")
    topics = [s.topic for s in speeches]
    assert sum(bool(t) for t in topics) / len(topics) > 0.8
    assert all(len(t) <= 160 for t in topics)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("SPDSPD", "SPD"),
        ("BÜNDNIS\xa090/DIE\n                    GRÜNEN", "BÜNDNIS 90/DIE GRÜNEN"),
        ("Die Linke", "DIE LINKE"),
        ("BSW", "BSW"),
        ("Fraktionslos", "fraktionslos"),
        ("Bremen", ""),
        ("", ""),
    ],
)
def test_parliamentary_groups_are_normalised(raw: str, expected: str) -> None:
    assert group_of(raw) == expected


def test_a_bom_before_the_declaration_is_read(xml_sessions: dict[str, bytes]) -> None:
    plain = parse_session(XmlDocument("a.xml", xml_sessions["19009"]))
    with_bom = parse_session(XmlDocument("a.xml", b"\xef\xbb\xbf" + xml_sessions["19009"]))
    assert with_bom == plain


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"<?xml version='1.0'?>\n<dbtplenarprotokoll sitzung-nr='1'>\n<p>a<br>b</p></dbtplenarprotokoll>", "line 3"),
        (b"<?xml version='1.0'?>\n<html><body/></html>", "is not <dbtplenarprotokoll>"),
        (b"<dbtplenarprotokoll wahlperiode='19'/>", "no sitzung-nr"),
    ],
)
def test_malformed_files_name_the_file_and_line(data: bytes, where: str) -> None:
    with pytest.raises(MalformedXmlError, match=where) as caught:
        parse_session(XmlDocument("bad-data.xml", data))
    assert str(caught.value).startswith("bad-data.xml: ")


def test_archives_folders_and_files_give_the_same_documents(tmp_path: Path, xml_sessions: dict[str, bytes]) -> None:
    members = {f"wp19/{k}-data.xml": v for k, v in sorted(xml_sessions.items())}
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, data in members.items():
        (folder / Path(name).name).write_bytes(data)
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    expected = list(members.values())
    for path in (tmp_path / "a.tar", tmp_path / "a.zip"):
        assert [d.data for d in iter_documents(path)] == expected
        assert [Path(d.name.split(":", 1)[1]).name for d in iter_documents(path)] == [Path(n).name for n in members]
    files = list_xml_inputs(folder)
    assert [d.data for f in files for d in iter_documents(f)] == expected


def test_unreadable_inputs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="input not found"):
        list_xml_inputs(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no XML files or archives"):
        list_xml_inputs(tmp_path)
    with pytest.raises(DataError, match="expected an XML file or an archive"):
        list_xml_inputs(tmp_path / "notes.txt")
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b\x08not really gzip")
    with pytest.raises(DataError, match="not a readable tar archive"):
        list(iter_documents(tmp_path / "broken.tar.gz"))
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 nope")
    with pytest.raises(DataError, match="not a readable zip archive"):
        list(iter_documents(tmp_path / "broken.zip"))


def speaker_sequence(speeches: list[Speech]) -> list[tuple[str, str]]:
    """(speaker, party) of the members' and government's speeches in order, repeats of one speaker merged."""
    pairs: list[tuple[str, str]] = []
    for speech in speeches:
        if speech.kind != "speech" or PRESIDING_ROLES.match(speech.role):
            continue
        pair = (speech.speaker, speech.party)
        if not pairs or pairs[-1] != pair:
            pairs.append(pair)
    return pairs


def parser_agreement(text_speeches: list[Speech], xml_speeches: list[Speech]) -> tuple[float, list[str]]:
    """Share of (speaker, party) pairs in order that the text parse and the XML agree on, and the differences."""
    ours, gold = speaker_sequence(text_speeches), speaker_sequence(xml_speeches)
    matcher = difflib.SequenceMatcher(a=ours, b=gold, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks())
    differences = [
        f"{tag}: text {ours[i1:i2]} / xml {gold[j1:j2]}"
        for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        if tag != "equal"
    ]
    return matched / max(len(ours), len(gold)), differences


def text_parse(shared_data: Path, number: str) -> list[Speech]:
    text = normalize_text((shared_data / "bundestag" / f"{number}.txt").read_text("utf-8-sig"))
    return parse_protocol(text, f"{number}.txt", "strip").speeches


@pytest.mark.parametrize("number", XML_SESSIONS)
def test_the_text_parser_agrees_with_the_xml(shared_data: Path, xml_sessions: dict[str, bytes], number: str) -> None:
    agreement, differences = parser_agreement(text_parse(shared_data, number), session(xml_sessions, number))
    assert agreement >= 0.95, differences


@pytest.mark.slow
def test_the_text_parser_agrees_with_the_xml_on_every_shared_session(shared_data: Path) -> None:
    numbers = ("19001", "19002", "19003", "19005", "19006", "19007", "19008", "19009", "19010", "19011")
    documents = xml_members(shared_data / "bundestag_xml" / "wp19.tar.gz", numbers)
    matched = total = 0.0
    for number in numbers:
        ours = text_parse(shared_data, number)
        gold = session(documents, number)
        agreement, _ = parser_agreement(ours, gold)
        size = max(len(speaker_sequence(ours)), len(speaker_sequence(gold)))
        matched, total = matched + agreement * size, total + size
    assert matched / total >= 0.95
