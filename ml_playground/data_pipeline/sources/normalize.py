"""Text normalisation shared by every source: line ends, invisible characters, Unicode NFC."""

from __future__ import annotations

import unicodedata

# Word-processor exports carry these in running text.
_TRANSLATE = str.maketrans(
    {
        "\u00a0": " ",  # no-break space
        "\u202f": " ",  # narrow no-break space
        "\u2007": " ",  # figure space
        "\u2009": " ",  # thin space
        "\u00ad": None,  # soft hyphen: a possible break, not a character
        "\u200b": None,  # zero-width space
        "\u2060": None,  # word joiner
        "\ufeff": None,  # stray byte-order mark inside the text
        "\x1e": "-",  # Word's non-breaking hyphen ("G\x1e20" is "G-20")
        "\x1f": None,  # Word's optional hyphen
        "\u2011": "-",  # non-breaking hyphen
    }
)


def normalize_text(text: str) -> str:
    """CRLF and CR to LF, no-break spaces to spaces, soft hyphens dropped, then NFC."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_TRANSLATE)
    return unicodedata.normalize("NFC", text)
