"""The structured header that conditions a speech on who gave it: one format for training and sampling.

A conditioned example is ``<|speaker|>Name<|party|>SPD<|year|>2019<|topic|>Klimaschutz<|text|>`` +
the speech + ``<|end|>`` + newline. Fields that are unknown are left out (topic often is). The
markers are special tokens of the tokenizer: never split, never merged with the text around them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ml_playground.core.tokenizer import END_OF_RECORD
from ml_playground.core.tokenizer_protocol import Tokenizer

FIELDS = ("speaker", "party", "year", "topic")
FIELD_TOKENS = {field: f"<|{field}|>" for field in FIELDS}
TEXT_TOKEN = "<|text|>"
END_TOKEN = END_OF_RECORD
SPECIAL_TOKENS = (*FIELD_TOKENS.values(), TEXT_TOKEN, END_TOKEN)
_FIELD_PATTERN = "".join(rf"(?:{re.escape(FIELD_TOKENS[f])}(?P<{f}>[^<]*))?" for f in FIELDS)
_EXAMPLE = re.compile(
    _FIELD_PATTERN + re.escape(TEXT_TOKEN) + r"(?P<text>.*?)(?P<end>" + re.escape(END_TOKEN) + ")?$", re.S
)


@dataclass(frozen=True)
class Conditioned:
    fields: dict[str, str]
    text: str
    finished: bool


def _clean(value: object) -> str:
    """No markers or line breaks inside a field value."""
    text = "" if value is None else str(value)
    for token in SPECIAL_TOKENS:
        text = text.replace(token, "")
    return " ".join(text.split())


def format_header(fields: Mapping[str, object]) -> str:
    parts = [f"{FIELD_TOKENS[f]}{_clean(fields.get(f))}" for f in FIELDS if _clean(fields.get(f))]
    return "".join(parts) + TEXT_TOKEN


def format_example(fields: Mapping[str, object], text: str) -> str:
    return f"{format_header(fields)}{text.strip()}{END_TOKEN}\n"


def parse_example(example: str) -> Conditioned | None:
    """Split one example (header + text, ``<|end|>`` optional) back into fields and text; None if malformed."""
    match = _EXAMPLE.match(example.strip("\n"))
    if match is None or any(token in match["text"] for token in SPECIAL_TOKENS):
        return None
    fields = {f: match[f] for f in FIELDS if match[f] is not None}
    return Conditioned(fields, match["text"], match["end"] is not None)


def header_stop_ids(tokenizer: Tokenizer) -> set[int]:
    """Ids of the header markers in ``tokenizer``: a speech ends at ``<|end|>``, or where a new header starts.

    Empty for a tokenizer without them (any dataset prepared without ``conditioning = "header"``)."""
    return {i for token in SPECIAL_TOKENS if (i := tokenizer.token_id(token)) is not None}
