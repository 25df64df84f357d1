"""Decode text files whose encoding is not declared: UTF-8 (with or without BOM) or a legacy 8-bit code page.

UTF-8 is tried first with a strict decode, since valid UTF-8 that is not meant as UTF-8 is
vanishingly rare for real text. Otherwise ``charset-normalizer`` proposes an encoding and we
confirm it: a strict decode must succeed and the result must not look like mojibake (UTF-8 bytes
read as a code page, ``Ã¤`` for ``ä``). Windows-1252, the legacy encoding of German
parliamentary documents, is preferred over a detector guess that decodes the same bytes to the
same or a less plausible text (Central European cp1250 and cp1252 agree on every German letter,
and the detector often cannot tell them apart).
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from charset_normalizer import from_bytes

from ml_playground.core.errors import DataError

LEGACY_DEFAULT = "cp1252"
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Two- and three-byte UTF-8 sequences as they look when read as cp1252/latin-1.
_MOJIBAKE = re.compile("[ÃÂ][\u0080-\u00bf\u2018-\u203a\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u02c6\u02dc]|â€")
# Chaos above this (charset-normalizer's mess ratio) means the guess is not trustworthy.
_MAX_CHAOS = 0.2


@dataclass(frozen=True)
class DecodedText:
    text: str
    encoding: str
    detected: bool  # False when the user chose the encoding


def _implausible_characters(text: str) -> int:
    """Characters that real prose in a Latin script rarely contains: controls and unassigned code points."""
    count = 0
    for char in text:
        if char in "\n\r\t":
            continue
        category = unicodedata.category(char)
        if category in ("Cc", "Cn", "Co", "Cs"):
            count += 1
    return count


def _strict(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def decode_bytes(data: bytes, path: Path, encoding: str | None = None) -> DecodedText:
    """Decode ``data`` (the contents of ``path``), by the user's ``encoding`` or by detection."""
    if encoding is not None:
        try:
            return DecodedText(data.decode(encoding), encoding, False)
        except LookupError:
            raise DataError(f"unknown encoding {encoding!r}", key="prepare.encoding") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"not valid {encoding} at byte {exc.start} (prepare.encoding)", path=path) from None
    for bom, name in _BOMS:
        if data.startswith(bom):
            text = _strict(data, name)
            if text is None:
                raise DataError(f"starts with a {name} byte-order mark but is not valid {name}", path=path)
            return DecodedText(text, name, True)
    text = _strict(data, "utf-8")
    if text is not None:
        return DecodedText(text, "utf-8", True)
    return _decode_legacy(data, path)


def _decode_legacy(data: bytes, path: Path) -> DecodedText:
    hint = "set prepare.encoding if you know the file's encoding"
    as_legacy = _strict(data, LEGACY_DEFAULT)
    if as_legacy is not None and _MOJIBAKE.search(as_legacy):
        raise DataError(
            "mixes UTF-8 with another encoding (decoding it would produce mojibake such as 'Ã¤'); "
            f"convert it to UTF-8 or {hint}",
            path=path,
        )
    best = from_bytes(data).best()
    if best is None or best.chaos > _MAX_CHAOS:
        raise DataError(f"cannot tell this file's text encoding with confidence; {hint}", path=path)
    candidates: dict[str, str] = {}
    for name in (LEGACY_DEFAULT, best.encoding):
        decoded = _strict(data, name)
        if decoded is not None:
            candidates.setdefault(name, decoded)
    if not candidates:
        raise DataError(f"detected {best.encoding} but the file does not decode with it; {hint}", path=path)
    # Fewest implausible characters wins; on a tie the first candidate (cp1252) wins.
    name = min(candidates, key=lambda n: _implausible_characters(candidates[n]))
    return DecodedText(candidates[name], codecs.lookup(name).name, True)
