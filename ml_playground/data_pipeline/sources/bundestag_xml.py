"""The Bundestag's official XML protocols (``dbtplenarprotokoll``, periods 19 onwards) -> speeches.

One session is one ``NNNNN-data.xml``; the open-data service ships a period as an archive. What we read:

- the root's ``wahlperiode``, ``sitzung-nr`` and ``sitzung-datum`` (``DD.MM.YYYY``);
- each ``<tagesordnungspunkt>``: its title (the first ``T_fett`` paragraph, else the first ``T_NaS``)
  is the ``topic`` of the speeches under it;
- each ``<rede>``: turns open with ``<p klasse="redner">`` (a ``<redner>`` with ``<vorname>``,
  ``<nachname>``, optional ``<titel>``/``<namenszusatz>``, a ``<fraktion>`` or a ``<rolle>``) or with
  ``<name>Präsident …:</name>`` (the chair). The rede's own speaker's turns form one speech; the chair's
  turns and other members' turns (questions) become records of their own, so that nothing the chair
  says is attributed to the speaker. ``<kommentar>`` interjections follow ``prepare.interjections``.

A session is parsed whole before any of its speeches is yielded (one file, a few MB), so a malformed
file is skipped or refused as a unit. Archives and files are read as streams, one member at a time.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.sources.bundestag import (
    InterjectionMode,
    Speech,
    normalize_party,
    parse_speaker_line,
)
from ml_playground.data_pipeline.sources.normalize import normalize_text
from ml_playground.data_pipeline.sources.records import PRESIDING_ROLES

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
XML_SUFFIX = ".xml"
TOPIC_MAX_CHARS = 160
_SKIPPED_CLASSES = ("AL_", "T_")  # name lists and agenda lines inside a rede: procedural, not speech
_BOM = b"\xef\xbb\xbf"


class MalformedXmlError(DataError):
    """A session file that is not well-formed XML or not a ``dbtplenarprotokoll``."""


@dataclass(frozen=True)
class XmlDocument:
    name: str  # "<archive>:wp19/19001-data.xml", or the file's path
    data: bytes


def is_xml_input(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and (name.endswith(ARCHIVE_SUFFIXES) or name.endswith(XML_SUFFIX))


def list_xml_inputs(path: Path) -> list[Path]:
    """One archive or XML file, or a folder holding archives and/or ``*.xml`` files (sorted)."""
    if not path.exists():
        raise DataError("input not found", path=path)
    if path.is_file():
        if not is_xml_input(path):
            raise DataError(f"expected an XML file or an archive ({', '.join(ARCHIVE_SUFFIXES)})", path=path)
        return [path]
    found = sorted(p for p in path.iterdir() if is_xml_input(p))
    if not found:
        raise DataError(f"no XML files or archives ({', '.join(ARCHIVE_SUFFIXES)}) in this folder", path=path)
    return found


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def iter_documents(path: Path) -> Iterator[XmlDocument]:
    """Every ``.xml`` member of an archive (in archive order), or the file itself; one in memory at a time."""
    name = path.name.lower()
    if name.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if not info.is_dir() and info.filename.lower().endswith(XML_SUFFIX):
                        yield XmlDocument(f"{path}:{info.filename}", archive.read(info))
        except zipfile.BadZipFile as exc:
            raise DataError(f"not a readable zip archive ({exc})", path=path) from None
    elif name.endswith(ARCHIVE_SUFFIXES):
        try:
            with tarfile.open(path, mode="r|*") as archive:  # a stream: members in order, nothing seeks back
                for member in archive:
                    handle = archive.extractfile(member) if member.isfile() else None
                    if handle is not None and member.name.lower().endswith(XML_SUFFIX):
                        yield XmlDocument(f"{path}:{member.name}", handle.read())
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"not a readable tar archive ({exc})", path=path) from None
    else:
        yield XmlDocument(str(path), path.read_bytes())


def _text(element: ET.Element | None) -> str:
    return " ".join(normalize_text("".join(element.itertext())).split()) if element is not None else ""


def _iso_date(value: str) -> str:
    day, _, rest = value.partition(".")
    month, _, year = rest.partition(".")
    if not (day.isdigit() and month.isdigit() and year.isdigit()):
        return ""
    return f"{int(year):04d}-{int(month):02d}-{int(day):02d}"


@dataclass(frozen=True)
class Speaker:
    speaker_id: str
    name: str
    party: str
    role: str
    raw_group: str


def _speaker(redner: ET.Element) -> Speaker:
    """Who speaks: the name as the protocol prints it after the markup (``Christian Freiherr von Stetten
    (CDU/CSU):``), else from its parts (``vorname`` sometimes holds the ``namenszusatz`` too); the group
    from ``<fraktion>``, the role from ``<rolle_lang>``."""
    name = redner.find("name")
    group = _text(name.find("fraktion")) if name is not None else ""
    role = _text(name.find("rolle/rolle_lang")) if name is not None else ""
    line = " ".join(normalize_text(redner.tail or "").split())
    printed = parse_speaker_line(line if line.endswith(":") else line + ":")
    if printed is not None:
        full = printed.speaker
        role = printed.role if PRESIDING_ROLES.match(printed.role) else role  # the President's own speech
    else:
        parts = [_text(name.find(tag)) if name is not None else "" for tag in ("titel", "vorname", "nachname")]
        full = " ".join(p for p in parts if p)
    return Speaker(redner.get("id", ""), full, group_of(group), role, group)


def group_of(raw: str) -> str:
    """The canonical spelling of a parliamentary group; a few files print it twice (``SPDSPD``); '' if unknown."""
    half = len(raw) // 2
    if len(raw) % 2 == 0 and raw[:half] == raw[half:] and normalize_party(raw) is None:
        raw = raw[:half]
    return normalize_party(raw) or ""


@dataclass
class _Turn:
    speaker: str
    speaker_id: str
    party: str
    role: str
    chair: bool
    paragraphs: list[str]

    @property
    def key(self) -> str:
        """Who this is: the member id, or the name where the XML gives none (some ministers' ``id=""``)."""
        return self.speaker_id or self.speaker


@dataclass(frozen=True)
class XmlSession:
    period: int | None
    session: int
    date: str
    speeches: list[Speech]
    unknown_groups: dict[str, int]


@dataclass
class _Chair:
    """Who presides: text outside a rede that no ``<name>`` opens (Fragestunde, agenda calls) is theirs."""

    turn: _Turn | None = None


def _turns(
    elements: list[ET.Element],
    interjections: InterjectionMode,
    separate: list[tuple[int, str]],
    unknown: Counter[str],
    chair: _Chair,
    *,
    inside_rede: bool,
) -> list[_Turn]:
    """The turns of a rede (or of a run of elements between reden) in order; interjections go to
    ``separate`` (turn index, text) in that mode, groups that are not known spellings are counted."""
    turns: list[_Turn] = []
    if not inside_rede and chair.turn is not None:
        turns.append(_Turn(chair.turn.speaker, "", "", chair.turn.role, True, []))
    for child in elements:
        klasse = child.get("klasse") or ""
        if child.tag == "p" and klasse == "redner":
            redner = child.find("redner")
            if redner is not None:
                who = _speaker(redner)
                turns.append(_Turn(who.name, who.speaker_id, who.party, who.role, False, []))
                if who.raw_group and not who.party:
                    unknown[who.raw_group] += 1
        elif child.tag == "name":
            line = " ".join(normalize_text(child.text or "").split())
            presiding = parse_speaker_line(line if line.endswith(":") else line + ":")
            name, role = (presiding.speaker, presiding.role) if presiding else (line.rstrip(":"), "Präsident")
            turns.append(_Turn(name, "", "", role, True, []))
            chair.turn = turns[-1]
        elif child.tag == "kommentar" and turns:
            text = _text(child)
            if interjections == "keep" and text:
                turns[-1].paragraphs.append(text)
            elif interjections == "separate" and text:
                separate.append((len(turns) - 1, text))
        elif child.tag == "p" and turns and not klasse.startswith(_SKIPPED_CLASSES) and (text := _text(child)):
            turns[-1].paragraphs.append(text)
    return turns


def parse_session(document: XmlDocument, interjections: InterjectionMode = "keep") -> XmlSession:
    """All speeches of one session, in order; a malformed file raises ``MalformedXmlError`` with its line."""
    data = document.data.lstrip()
    if data.startswith(_BOM):  # a BOM before the declaration: valid UTF-8, refused by expat
        data = data[len(_BOM) :].lstrip()
    try:
        root = ET.parse(io.BytesIO(data)).getroot()
    except ET.ParseError as exc:
        line, column = exc.position
        raise MalformedXmlError(f"line {line}, column {column}: not well-formed XML", path=document.name) from None
    if root.tag != "dbtplenarprotokoll":
        raise MalformedXmlError(f"line 1: root element <{root.tag}> is not <dbtplenarprotokoll>", path=document.name)
    period_text, session_text = root.get("wahlperiode", ""), root.get("sitzung-nr", "")
    if not session_text.isdigit():
        raise MalformedXmlError("line 1: the root has no sitzung-nr", path=document.name)
    period = int(period_text) if period_text.isdigit() else None
    session, date = int(session_text), _iso_date(root.get("sitzung-datum", ""))
    speeches: list[Speech] = []
    unknown: Counter[str] = Counter()
    flow = root.find("sitzungsverlauf")
    chair = _Chair()
    for item in flow if flow is not None else []:
        where = _Context(document.name, period, session, date, _topic(item))
        loose: list[ET.Element] = []  # the chair's calls, Fragestunde turns: between and outside reden
        for child in item:
            if child.tag != "rede":
                loose.append(child)
                continue
            speeches.extend(_run_speeches(loose, interjections, unknown, chair, where, inside_rede=False))
            speeches.extend(_run_speeches(list(child), interjections, unknown, chair, where, inside_rede=True))
            loose = []
        speeches.extend(_run_speeches(loose, interjections, unknown, chair, where, inside_rede=False))
    return XmlSession(period, session, date, speeches, dict(unknown))


@dataclass(frozen=True)
class _Context:
    source_file: str
    period: int | None
    session: int
    date: str
    topic: str


def _run_speeches(
    elements: list[ET.Element],
    interjections: InterjectionMode,
    unknown: Counter[str],
    chair: _Chair,
    where: _Context,
    *,
    inside_rede: bool,
) -> list[Speech]:
    """One record per turn in order, except that a member's turns interrupted only by the chair are one speech.

    ``A, chair, A`` is one speech by A plus the chair's record; ``A, chair, B, A`` (a question) is A, the
    chair, B, then A again, as the stenographers' text prints it.
    """
    separate: list[tuple[int, str]] = []
    turns = _turns(elements, interjections, separate, unknown, chair, inside_rede=inside_rede)
    records: list[tuple[_Turn, list[str]]] = []
    interjections_after: dict[int, list[str]] = {}
    open_member: int | None = None  # the member's record that a turn of the same member continues
    for index, turn in enumerate(turns):
        if turn.chair:
            if turn.paragraphs:
                records.append((turn, list(turn.paragraphs)))
        elif open_member is not None and records[open_member][0].key == turn.key:
            records[open_member][1].extend(turn.paragraphs)
        else:
            records.append((turn, list(turn.paragraphs)))
            open_member = len(records) - 1
        target = open_member if not turn.chair and open_member is not None else len(records) - 1
        interjections_after.setdefault(target, []).extend(text for at, text in separate if at == index)
    speeches: list[Speech] = []
    for position, (turn, paragraphs) in enumerate(records):
        if paragraphs:
            speeches.append(
                Speech(
                    turn.speaker,
                    turn.role,
                    turn.party,
                    where.session,
                    where.date,
                    "\n".join(paragraphs),
                    where.source_file,
                    where.period,
                    topic=where.topic,
                    speaker_id=turn.speaker_id,
                )
            )
        speeches.extend(
            Speech("", "", "", where.session, where.date, text, where.source_file, where.period, kind="interjection")
            for text in interjections_after.get(position, [])
        )
    return speeches


def _topic(item: ET.Element) -> str:
    """An agenda item's title: its first ``T_fett`` paragraph, else its first ``T_NaS``; at most 160 chars."""
    titles: dict[str, str] = {}
    for child in item:
        klasse = child.get("klasse") or ""
        if child.tag == "p" and klasse in ("T_fett", "T_NaS") and klasse not in titles:
            titles[klasse] = _text(child)
    topic = titles.get("T_fett") or titles.get("T_NaS") or ""
    if len(topic) > TOPIC_MAX_CHARS:
        topic = topic[:TOPIC_MAX_CHARS].rsplit(" ", 1)[0]
    return topic
