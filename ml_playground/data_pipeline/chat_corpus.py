"""The chat formats' source and encoder: conversations (chat JSONL, or question/answer pairs from the
XML protocols) -> one record per conversation, with a loss mask on the assistant's turns.

The conversations are encoded through the base tokenizer's chat template (``chat_encoding``),
fitted to ``prepare.chat_max_tokens`` (the training window: ``train.model.block_size + 1`` unless
set) by cutting after the last assistant turn that fits, or dropped when none fits; both are
counted and printed. The last ``val_fraction`` of the conversations (at least one) is validation;
they are also written as ``val_conversations.jsonl`` for the chat evaluation (``eval``: how often
the model stops, how long it answers).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.atomic import atomic_write_text
from ml_playground.core.errors import DataError
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.data_pipeline.chat_encoding import ChatEncoder, FitCounts, fit, load_template
from ml_playground.data_pipeline.corpus import iter_xml_speeches
from ml_playground.data_pipeline.encoders import EncodedRecord, Finished, pretrained_tokenizer
from ml_playground.data_pipeline.record_corpus import RecordSet
from ml_playground.data_pipeline.sources.bundestag_qa import QaStats, qa_conversations
from ml_playground.data_pipeline.sources.chat import Conversation, read_chat_jsonl
from ml_playground.data_pipeline.sources.records import ReadStats
from ml_playground.data_pipeline.sources.text import SourceText

VAL_CONVERSATIONS = "val_conversations.jsonl"


def read_conversations(
    config: PrepareConfig, sources: list[SourceText], stats: ReadStats, qa: QaStats
) -> list[Conversation]:
    if config.format == "chat":
        return list(read_chat_jsonl([(source.path, source.text) for source in sources]))

    # the protocols' own reader; interjections inside a question or an answer are not part of it
    speeches = iter_xml_speeches(config.model_copy(update={"interjections": "strip"}), sources, stats)
    return list(qa_conversations(speeches, qa, config.answer_max_chars))


def conversation_records(config: PrepareConfig, sources: list[SourceText]) -> RecordSet:
    """The source stage of the chat formats: the conversations, in memory (they are few and short)."""
    stats, qa = ReadStats(), QaStats()
    conversations = read_conversations(config, sources, stats, qa)
    if not conversations:
        raise DataError("no conversations in the input", key="prepare.input_path")
    warnings = stats.summary(0, Counter(), Counter())[1]
    details = qa.details() if config.format == "bundestag_qa" else []
    return RecordSet([], lambda: iter(conversations), len(conversations), details=details, warnings=warnings)


class ChatRecords:
    """The encoder of the chat formats: each conversation through the chat template, fitted to
    ``chat_max_tokens``; the kept validation conversations are written for the chat evaluation."""

    def __init__(self, config: PrepareConfig, records: RecordSet, n_val: int) -> None:
        """``n_val``: the last conversations, which are validation."""
        pretrained = pretrained_tokenizer(config)
        self.tokenizer: Tokenizer = pretrained
        template = load_template(config.chat_template, pretrained.tokenizer, str(config.hf_tokenizer))
        self.encoder = ChatEncoder(pretrained.tokenizer, template, config.chat_turns)
        assert config.chat_max_tokens is not None  # ExperimentConfig fills it from the training window
        self.limit = config.chat_max_tokens
        self.first_val = records.count - n_val
        self.config = config
        self.counts = FitCounts()
        self.val_kept: list[Conversation] = []
        self.characters = 0

    def encode(self, batch: Sequence[tuple[int, Any]]) -> list[EncodedRecord | None]:
        encoded: list[EncodedRecord | None] = []
        for position, conversation in batch:
            fitted = fit(self.encoder.encode(conversation.messages), self.limit, self.counts)
            if fitted is None:
                encoded.append(None)
                continue
            encoded.append(EncodedRecord(fitted.ids, fitted.mask, 0))
            self.characters += sum(len(m["content"]) for m in conversation.messages)
            if position >= self.first_val:
                self.val_kept.append(conversation)
        return encoded

    def finish(self, out: Path, train_records: int, val_records: int) -> Finished:
        for split, kept in (("", train_records), ("validation ", val_records)):
            if not kept:
                raise DataError(
                    f"no {split}conversation fits in {self.limit} tokens; raise train.model.block_size",
                    key="train.model.block_size",
                )
        atomic_write_text(out / VAL_CONVERSATIONS, conversations_jsonl(self.val_kept))
        details = [
            f"conversations: {train_records:,} train, {val_records:,} validation; {self.counts.cut:,} cut after the "
            f"last assistant turn within {self.limit} tokens, {self.counts.dropped:,} dropped (not even the first "
            "turn fits)",
        ]
        chat = {
            "template": self.encoder.template,
            "end_of_turn": sorted(self.encoder.end_of_turn),
            "turns": self.config.chat_turns,
        }
        return Finished(details, {"chat": chat, "record_windows": "whole"}, self.characters)


def conversations_jsonl(conversations: list[Conversation]) -> str:
    return "".join(
        json.dumps({"messages": list(c.messages), "source": c.source}, ensure_ascii=False) + "\n" for c in conversations
    )
