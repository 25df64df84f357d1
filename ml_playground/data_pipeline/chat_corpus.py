"""The chat formats: conversations (chat JSONL, or question/answer pairs from the XML protocols) ->
train/val token streams with a loss mask and a record index, one conversation per record.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.errors import DataError
from ml_playground.core.tokenizer import PretrainedTokenizer
from ml_playground.data_pipeline.chat_encoding import ChatEncoder, FitCounts, fit, load_template
from ml_playground.data_pipeline.corpus import iter_xml_speeches
from ml_playground.data_pipeline.packing import PackedTokens
from ml_playground.data_pipeline.record_corpus import validation_records
from ml_playground.data_pipeline.sources.bundestag_qa import QaStats, qa_conversations
from ml_playground.data_pipeline.sources.chat import Conversation, read_chat_jsonl
from ml_playground.data_pipeline.sources.records import ReadStats
from ml_playground.data_pipeline.sources.text import SourceText

CHAT_FORMATS = ("chat", "bundestag_qa")
VAL_CONVERSATIONS = "val_conversations.jsonl"


@dataclass
class ChatSplits:
    tokenizer: PretrainedTokenizer
    train: PackedTokens
    val: PackedTokens
    characters: int
    chat: dict[str, Any]  # what the checkpoint records: template, end-of-turn tokens, which turns are trained
    val_conversations: list[Conversation]
    details: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_conversations(
    config: PrepareConfig, sources: list[SourceText], stats: ReadStats, qa: QaStats
) -> list[Conversation]:
    if config.format == "chat":
        return list(read_chat_jsonl([(source.path, source.text) for source in sources]))

    # the protocols' own reader; interjections inside a question or an answer are not part of it
    speeches = iter_xml_speeches(config.model_copy(update={"interjections": "strip"}), sources, stats)
    return list(qa_conversations(speeches, qa, config.answer_max_chars))


def _pack(encoded: list[Any]) -> PackedTokens:
    lengths = np.asarray([len(e.ids) for e in encoded], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    index = np.stack([starts, np.zeros_like(lengths), lengths], axis=1)
    return PackedTokens(np.concatenate([e.ids for e in encoded]), np.concatenate([e.mask for e in encoded]), index)


def chat_encoder(config: PrepareConfig) -> tuple[PretrainedTokenizer, ChatEncoder]:
    assert config.hf_tokenizer is not None  # ExperimentConfig fills it from train.model.base_model
    tokenizer = PretrainedTokenizer.from_pretrained(
        config.hf_tokenizer, key="prepare.hf_tokenizer", cache_dir=config.cache_dir
    )
    template = load_template(config.chat_template, tokenizer.tokenizer, config.hf_tokenizer)
    return tokenizer, ChatEncoder(tokenizer.tokenizer, template, config.chat_turns)


def chat_splits(config: PrepareConfig, sources: list[SourceText]) -> ChatSplits:
    tokenizer, encoder = chat_encoder(config)
    stats, qa = ReadStats(), QaStats()
    conversations = read_conversations(config, sources, stats, qa)
    if not conversations:
        raise DataError("no conversations in the input", key="prepare.input_path")
    n_val = validation_records(config, len(conversations))
    limit = config.chat_max_tokens
    assert limit is not None  # ExperimentConfig fills it from the training window
    parts: list[list[Any]] = [[], []]
    val_kept: list[Conversation] = []
    counts = FitCounts()
    characters = 0
    for position, conversation in enumerate(conversations):
        fitted = fit(encoder.encode(conversation.messages), limit, counts)
        if fitted is None:
            continue
        is_val = position >= len(conversations) - n_val
        parts[is_val].append(fitted)
        characters += sum(len(m["content"]) for m in conversation.messages)
        if is_val:
            val_kept.append(conversation)
    for split, part in (("", parts[0]), ("validation ", parts[1])):
        if not part:
            raise DataError(
                f"no {split}conversation fits in {limit} tokens; raise train.model.block_size",
                key="train.model.block_size",
            )
    details = [
        *(qa.details() if config.format == "bundestag_qa" else []),
        f"conversations: {len(parts[0]):,} train, {len(parts[1]):,} validation; {counts.cut:,} cut after the last "
        f"assistant turn within {limit} tokens, {counts.dropped:,} dropped (not even the first turn fits)",
    ]
    chat = {
        "template": encoder.template,
        "end_of_turn": sorted(encoder.end_of_turn),
        "turns": config.chat_turns,
    }
    warnings = stats.summary(0, Counter(), Counter())[1]
    return ChatSplits(tokenizer, _pack(parts[0]), _pack(parts[1]), characters, chat, val_kept, details, warnings)


def conversations_jsonl(conversations: list[Conversation]) -> str:
    return "".join(
        json.dumps({"messages": list(c.messages), "source": c.source}, ensure_ascii=False) + "\n" for c in conversations
    )
