"""Which stages ``prepare`` runs, chosen once from the config.

Every dataset goes the same way: **source** (the input format, read and filtered) -> **records**
(the tables beside the dataset and ``corpus.txt``, each file with one writer) -> **encoder** (the
tokenizer, a header or template before each record, the loss mask) -> **layout** (one token stream,
or records with an index and a mask) -> the files, ``meta.json`` last. This module only decides; the
stages themselves are ``corpus`` (source), ``record_corpus`` (records), ``encoders`` and ``layouts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ml_playground.configuration.models import PrepareConfig

CHAT_FORMATS = ("chat", "bundestag_qa")
PROTOCOL_FORMATS = ("bundestag", "bundestag_xml")

SourceKind = Literal["text", "protocols", "records", "conversations"]
EncoderKind = Literal["own", "header", "pretrained", "chat"]
LayoutKind = Literal["stream", "records"]

_SOURCE_WORDS = {
    "text": "plain text",
    "protocols": "plenary protocols (speeches table, corpus.txt)",
    "records": "speech records (records.jsonl, conditions.json, corpus.txt)",
    "conversations": "conversations",
}
_LAYOUT_WORDS = {"stream": "one token stream", "records": "records with index and loss mask"}


@dataclass(frozen=True)
class Stages:
    source: SourceKind
    encoder: EncoderKind
    layout: LayoutKind
    tokenizer: str

    def describe(self) -> str:
        encoder = {
            "own": f"{self.tokenizer} tokenizer",
            "header": f"{self.tokenizer} tokenizer with a conditioning header",
            "pretrained": "the pretrained tokenizer" + (" (+ EOS per record)" if self.layout == "records" else ""),
            "chat": "the pretrained tokenizer's chat template",
        }[self.encoder]
        return f"stages: {_SOURCE_WORDS[self.source]} -> {encoder} -> {_LAYOUT_WORDS[self.layout]}"


def choose_stages(config: PrepareConfig) -> Stages:
    """The one place that maps format x tokenizer x conditioning onto stages (``check_settings`` has
    already refused the combinations that make no sense)."""
    if config.format in CHAT_FORMATS:
        return Stages("conversations", "chat", "records", config.tokenizer)
    if config.format == "text":
        return Stages("text", "pretrained" if config.tokenizer == "hf" else "own", "stream", config.tokenizer)
    source: SourceKind = (
        "protocols" if config.format in PROTOCOL_FORMATS and config.conditioning == "none" else "records"
    )
    if config.tokenizer == "hf":  # records packed with EOS, whatever goes before them
        return Stages(source, "pretrained", "records", config.tokenizer)
    if config.conditioning == "header":
        return Stages(source, "header", "records", config.tokenizer)
    return Stages(source, "own", "stream", config.tokenizer)
