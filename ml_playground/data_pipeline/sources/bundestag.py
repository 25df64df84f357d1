"""German Bundestag plenary protocols (the plain-text "Stenografischer Bericht") -> speech records.

What a protocol looks like, and what we keep:

- a title block (``Deutscher Bundestag`` / ``Stenografischer Bericht`` / ``9. Sitzung`` /
  ``Berlin, Montag, den 22. Januar 2018``), then the table of contents: dropped;
- ``Beginn: 11.02 Uhr`` opens the session and ``(Schluss: 13.08 Uhr)`` closes it; the annexes
  after it (lists of absent members, written speeches, votes) are dropped;
- page headers (``Deutscher Bundestag – 19. Wahlperiode – 9. Sitzung. Berlin, …``) and margin
  markers ``(A)``..``(D)`` from the printed page layout: dropped wherever they appear;
- speaker lines open a speech: ``Carsten Schneider (Erfurt) (SPD):``,
  ``Präsident Dr. Wolfgang Schäuble:``, ``Dr. Angela Merkel, Bundeskanzlerin:``;
- interjections are whole lines in parentheses: ``(Beifall bei der SPD)``; kept inline, stripped,
  or emitted as separate records;
- agenda items, printed paper numbers and committee lists between speeches (lines with tabs,
  ``Drucksache …``) are procedural and dropped; a line that is not indented continues the speech
  only right after an interjection (where the stenographers break a paragraph).

The input is text that ``normalize_text`` has already cleaned (LF line ends, no no-break spaces).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ml_playground.core.errors import DataError

InterjectionMode = Literal["keep", "strip", "separate"]

PARTIES = ("CDU/CSU", "SPD", "AfD", "FDP", "DIE LINKE", "BÜNDNIS 90/DIE GRÜNEN", "BSW")
NON_ATTACHED = "fraktionslos"
_PARTY_KEYS = {re.sub(r"[\s/]+", "", party).upper(): party for party in PARTIES} | {
    "LINKE": "DIE LINKE",
    "BÜNDNIS90DIEGRÜNEN": "BÜNDNIS 90/DIE GRÜNEN",
    "GRÜNE": "BÜNDNIS 90/DIE GRÜNEN",
    "FRAKTIONSLOS": NON_ATTACHED,
}
MONTHS = {
    name: number
    for number, name in enumerate(
        (
            "Januar",
            "Februar",
            "März",
            "April",
            "Mai",
            "Juni",
            "Juli",
            "August",
            "September",
            "Oktober",
            "November",
            "Dezember",
        ),
        start=1,
    )
}

_SESSION = re.compile(r"^(\d+)\. Sitzung\s*$", re.MULTILINE)
_DATE = re.compile(r"^Berlin, \w+, (?:den )?(\d{1,2})\. (\w+) (\d{4})", re.MULTILINE)
_PERIOD_SOURCES = (
    re.compile(r"Plenarprotokoll (\d+)/\d+"),
    re.compile(r"Deutscher Bundestag\s*[–-]\s*(\d+)\.\s*Wahlperiode"),
)
_BEGIN = re.compile(r"^Beginn: ?\d", re.MULTILINE)
_END = re.compile(r"^\(Schluss: ?\d", re.MULTILINE)
_PAGE_HEADER = re.compile(
    r"^\s*(?:[IVXLC]+|\d+)?\s*Deutscher Bundestag\s*[–-]\s*\d+\.\s*Wahlperiode\s*[–-]\s*\d+\.\s*Sitzung"
    r"[.,]?\s*Berlin,.*$"
)
_MARGIN_ONLY = re.compile(r"^\s*\([A-D]\)\s*$")
_MARGIN_EDGES = re.compile(r"^\s*\([A-D]\)\s+|\s+\([A-D]\)\s*$")

_PRESIDING = re.compile(r"^(?P<role>(?:Alters|Vize)?[Pp]räsident(?:in)?) (?P<name>[^:()]+):$")
_MEMBER = re.compile(r"^(?P<name>[^:()]+?)(?: \((?P<constituency>[^()]+)\))? \((?P<party>[^()]+)\):$")
_GOVERNMENT = re.compile(r"^(?P<name>[^:(),]+), (?P<role>[^:]+):$")
_GOVERNMENT_ROLE = re.compile(
    r"^(?:Parl\. )?(?:Bundes|Staats|Minister|Präsident|Wehrbeauftragte|Beauftragte|Senator|Erste|Regierende|"
    r"Bürgermeister)"
)
_NAME_PARTICLES = {"von", "van", "de", "der", "den", "zu", "da", "di", "dos", "del", "la", "le", "h.", "c.", "und"}
_PROCEDURAL = re.compile(r"\t|^Drucksachen?\b")


class NotAProtocolError(DataError):
    """The file has no ``Beginn:`` line, so it is not a plenary protocol."""


@dataclass(frozen=True)
class Speech:
    speaker: str
    role: str
    party: str
    session: int
    date: str
    text: str
    source_file: str
    period: int | None = None
    constituency: str = ""
    kind: Literal["speech", "interjection"] = "speech"
    topic: str = ""  # the agenda item (XML protocols mark it up; the text parser leaves it empty)
    speaker_id: str = ""  # the Bundestag's member id (XML protocols)

    def header(self) -> str:
        """The speaker line as the protocol prints it (without constituency)."""
        if self.role and _PRESIDING.match(f"{self.role} {self.speaker}:"):
            return f"{self.role} {self.speaker}:"
        if self.role:
            return f"{self.speaker}, {self.role}:"
        if self.party:
            return f"{self.speaker} ({self.party}):"
        return f"{self.speaker}:"

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["speaker_line"] = self.header() if self.kind == "speech" else ""
        return record


@dataclass
class Protocol:
    source_file: str
    period: int | None
    session: int
    date: str
    speeches: list[Speech]
    dropped_lines: Counter[str] = field(default_factory=Counter)


def normalize_party(raw: str) -> str | None:
    """``BÜNDNIS 90/\\nDIE GRÜNEN`` and friends -> the canonical spelling; None when not a known group."""
    return _PARTY_KEYS.get(re.sub(r"[\s/]+", "", raw).upper())


def _is_name(name: str) -> bool:
    words = name.split()
    if not 1 <= len(words) <= 9 or any(ch.isdigit() for ch in name):
        return False
    return all(word[0].isupper() or word in _NAME_PARTICLES for word in words)


@dataclass(frozen=True)
class SpeakerLine:
    speaker: str
    role: str
    party: str
    constituency: str


def parse_speaker_line(line: str) -> SpeakerLine | None:
    """Recognise a speaker line (already stripped, whitespace collapsed); None for anything else."""
    if not line.endswith(":") or len(line) > 250 or line.startswith("("):
        return None
    if match := _PRESIDING.match(line):
        name = match["name"].strip()
        return SpeakerLine(name, match["role"], "", "") if _is_name(name) else None
    if match := _MEMBER.match(line):
        party = normalize_party(match["party"])
        name = match["name"].strip()
        if party is not None and _is_name(name) and len(name.split()) >= 2:
            return SpeakerLine(name, "", party, (match["constituency"] or "").strip())
        return None
    if match := _GOVERNMENT.match(line):
        name, role = match["name"].strip(), match["role"].strip()
        if _GOVERNMENT_ROLE.match(role) and _is_name(name) and len(name.split()) >= 2:
            return SpeakerLine(name, role, "", "")
    return None


def _header_fields(text: str, source_file: str) -> tuple[int | None, int, str]:
    begin = _BEGIN.search(text)
    head = text[: begin.start()] if begin else text
    session = _SESSION.search(head)
    date = _DATE.search(head)
    if session is None or date is None or date[2] not in MONTHS:
        raise NotAProtocolError(
            "no protocol title block (expected 'N. Sitzung' and 'Berlin, <Tag>, den <D>. <Monat> <Jahr>')",
            path=source_file,
        )
    period = None
    for pattern in _PERIOD_SOURCES:
        if found := pattern.search(text):
            period = int(found[1])
            break
    iso_date = f"{int(date[3]):04d}-{MONTHS[date[2]]:02d}-{int(date[1]):02d}"
    return period, int(session[1]), iso_date


def _join_broken_speaker_lines(lines: list[str]) -> list[str]:
    """``Cem Özdemir (BÜNDNIS 90/`` + ``DIE GRÜNEN):`` -> one speaker line."""
    joined: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.count("(") > line.count(")") and index + 1 < len(lines):
            candidate = " ".join((line.strip() + " " + lines[index + 1].strip()).split())
            candidate = candidate.replace("/ ", "/")
            if parse_speaker_line(candidate) is not None:
                joined.append("  " + candidate)
                index += 2
                continue
        joined.append(line)
        index += 1
    return joined


def parse_protocol(text: str, source_file: str, interjections: InterjectionMode = "keep") -> Protocol:
    """Split one protocol into speeches (and interjection records when ``interjections='separate'``)."""
    begin = _BEGIN.search(text)
    if begin is None:
        raise NotAProtocolError("no 'Beginn:' line opening a plenary session", path=source_file)
    period, session, date = _header_fields(text, source_file)
    body_start = text.index("\n", begin.start()) + 1 if "\n" in text[begin.start() :] else len(text)
    end = _END.search(text, body_start)
    body = text[body_start : end.start() if end else len(text)]
    dropped: Counter[str] = Counter()
    dropped["table of contents"] = text[: begin.start()].count("\n")
    dropped["annex"] = text[end.start() :].count("\n") if end else 0

    lines: list[str] = []
    for line in body.split("\n"):
        if _PAGE_HEADER.match(line):
            dropped["page headers"] += 1
            continue
        if _MARGIN_ONLY.match(line):
            dropped["margin markers"] += 1
            continue
        lines.append(_MARGIN_EDGES.sub("", line) if _MARGIN_EDGES.search(line) else line)

    records: list[Speech] = []
    current: SpeakerLine | None = None
    paragraphs: list[str] = []
    separate: list[Speech] = []  # interjections of the current speech, emitted after it
    previous = "none"

    def flush() -> None:
        body_text = "\n".join(paragraphs).strip()
        if current is not None and body_text:
            records.append(
                Speech(
                    current.speaker,
                    current.role,
                    current.party,
                    session,
                    date,
                    body_text,
                    source_file,
                    period,
                    current.constituency,
                )
            )
        records.extend(separate)
        paragraphs.clear()
        separate.clear()

    for raw in _join_broken_speaker_lines(lines):
        line = " ".join(raw.split())
        if not line:
            continue
        speaker = parse_speaker_line(line)
        if speaker is not None:
            flush()
            current, previous = speaker, "speaker"
            continue
        if line.startswith("(") and line.endswith(")"):
            previous = "interjection"
            if current is None or interjections == "strip":
                dropped["interjections"] += 1
            elif interjections == "keep":
                paragraphs.append(line)
            else:
                separate.append(Speech("", "", "", session, date, line, source_file, period, kind="interjection"))
            continue
        indented = raw.startswith(" ")
        if _PROCEDURAL.search(raw) or not (indented or previous == "interjection"):
            dropped["procedural lines"] += 1
            previous = "procedural"
            continue
        if current is None:
            dropped["before the first speaker"] += 1
            continue
        paragraphs.append(line)
        previous = "text"
    flush()
    return Protocol(source_file, period, session, date, records, dropped)
