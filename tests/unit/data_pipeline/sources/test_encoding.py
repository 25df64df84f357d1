from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.sources.encoding import decode_bytes
from ml_playground.data_pipeline.sources.normalize import normalize_text

pytestmark = pytest.mark.unit

GERMAN = (
    "Präsident Dr. Wolfgang Schäuble: „Größe“ ist kein Maßstab – Übermaß auch nicht… "
    "‚öffentlich‘ heißt: für alle. Äpfel, Öl und Ü-Wagen kosten 5 €.\n"
)
PATH = Path("protocol.txt")


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (GERMAN.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF8 + GERMAN.encode("utf-8"), "utf-8-sig"),
        (GERMAN.encode("cp1252"), "cp1252"),
        ((GERMAN * 20).encode("cp1252"), "cp1252"),
        (GERMAN.encode("utf-16"), "utf-16"),
    ],
)
def test_the_same_german_text_decodes_exactly_from_each_encoding(data: bytes, encoding: str) -> None:
    decoded = decode_bytes(data, PATH)
    assert decoded.encoding == encoding
    assert decoded.detected
    assert decoded.text.lstrip("\ufeff").startswith(GERMAN)
    assert "Ã" not in decoded.text


def test_a_short_legacy_file_still_decodes_to_german() -> None:
    decoded = decode_bytes("Grüße aus Köln\n".encode("cp1252"), PATH)
    assert decoded.text == "Grüße aus Köln\n"


def test_an_explicit_encoding_is_used_as_given() -> None:
    decoded = decode_bytes(GERMAN.encode("cp1252"), PATH, "cp1252")
    assert (decoded.text, decoded.encoding, decoded.detected) == (GERMAN, "cp1252", False)


def test_mixed_utf8_and_cp1252_is_refused_instead_of_producing_mojibake() -> None:
    data = ("Grüße " * 30).encode("utf-8") + "Köln".encode("cp1252")
    with pytest.raises(DataError, match="mojibake") as info:
        decode_bytes(data, PATH)
    assert "protocol.txt" in str(info.value)


def test_bytes_that_are_no_text_encoding_are_refused_with_the_file_named() -> None:
    noise = bytes(range(128, 256)) * 8
    with pytest.raises(DataError, match="cannot tell this file's text encoding") as info:
        decode_bytes(noise, PATH)
    assert "protocol.txt" in str(info.value)


def test_a_broken_bom_file_is_named() -> None:
    with pytest.raises(DataError, match="byte-order mark"):
        decode_bytes(codecs.BOM_UTF8 + b"ok \xff\xfe broken", PATH)


def test_normalisation_of_line_ends_spaces_hyphens_and_composition() -> None:
    raw = "BÜNDNIS\u00a090/DIE GRÜNEN\r\nStaats\u00adsekretär\rG\x1e20 Gipfel: Mu\u0308ller"
    assert normalize_text(raw) == "BÜNDNIS 90/DIE GRÜNEN\nStaatssekretär\nG-20 Gipfel: Müller"
