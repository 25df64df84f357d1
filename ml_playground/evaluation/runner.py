"""``eval``: the loss and bits per byte of a checkpoint, over the whole validation split or any text.

``--data PATH`` scores a text file or folder (or protocols, with the experiment's own
``prepare.format``: ``bundestag`` or ``bundestag_xml``) with the checkpoint's own tokenizer, every
target once, writing nothing into the experiment's dataset folder. Bits per byte (see
``core/token_bytes.py``) compares models whose tokenizers differ; the loss per token does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.devices import Precision, resolve_precision
from ml_playground.core.errors import CheckpointError, DataError, UserError
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.data_pipeline.batches import TokenDataset, open_dataset
from ml_playground.evaluation.chat import ChatEval, evaluate_chat, read_val_conversations
from ml_playground.families.base import InferenceModel
from ml_playground.sampling.runner import load_model
from ml_playground.training.evaluation import SplitLoss, evaluate_split

VALIDATION_SPLIT = "validation split"


@dataclass(frozen=True)
class EvalReport:
    val_loss: float
    tokens: int
    checkpoint: str
    step: int
    bits_per_byte: float | None = None
    bytes: int = 0
    data: str = VALIDATION_SPLIT
    characters: int = 0  # of the text scored (--data)
    seconds: float = 0.0
    notes: tuple[str, ...] = ()
    text_tokens: int = 0  # of the whole text (--data), also when --max-tokens scores only part of it
    chat: ChatEval | None = None  # a chat fine-tune: stop rate, answer lengths, language of its answers
    context_length: int = 0  # the windows it was scored in (the checkpoint's context)

    def to_dict(self) -> dict[str, Any]:
        return {
            "val_loss": self.val_loss,
            "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "characters": self.characters,
            "data": self.data,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "seconds": self.seconds,
            **(self.chat.to_dict() if self.chat is not None else {}),
        }


def evaluate_checkpoint(
    config: ExperimentConfig,
    data: Path | None = None,
    max_tokens: int | None = None,
    questions: int = 0,
    emit: Callable[[str], None] = lambda _: None,
) -> EvalReport:
    """``questions``: on a chat dataset, ask that many validation questions again (``evaluation.chat``)."""
    started = time.perf_counter()
    precision = resolve_precision(config.train.device, config.train.dtype)
    scored = load_model(config)
    lengths = scored.tokenizer.token_byte_lengths()
    notes: tuple[str, ...] = ()
    characters = text_tokens = 0
    chat: ChatEval | None = None
    if data is None:
        dataset = open_dataset(config.prepare.dataset_dir)
        _check_same_dataset(config, dataset, scored)
        result = _score_split(scored, dataset, precision, lengths, max_tokens)
        if questions > 0 and dataset.meta.get("chat"):
            asked = read_val_conversations(config.prepare.dataset_dir)[:questions]
            chat = evaluate_chat(
                scored, asked, config.sample.max_new_tokens, emit, repetition_penalty=config.sample.repetition_penalty
            )
    else:
        text = read_eval_text(config, data)
        ids, notes = encode_eval_text(scored.tokenizer, text, data)
        characters, text_tokens = len(text), len(ids)
        ids = as_document(ids, scored.tokenizer.eos_token_id)
        if len(ids) < 2:
            raise DataError("too little text to score (fewer than two tokens)", path=data)
        result = evaluate_split(
            scored.module,
            ids.astype(np.uint32),
            block_size=scored.context_length,
            precision=precision,
            max_targets=max_tokens,
            token_bytes=lengths,
        )
    return EvalReport(
        result.loss,
        result.tokens,
        scored.checkpoint,
        scored.step,
        result.bits_per_byte,
        result.bytes,
        VALIDATION_SPLIT if data is None else str(data),
        characters,
        time.perf_counter() - started,
        notes,
        text_tokens,
        chat,
        scored.context_length,
    )


def _score_split(
    scored: InferenceModel,
    dataset: TokenDataset,
    precision: Precision,
    lengths: npt.NDArray[np.int64],
    max_tokens: int | None,
) -> SplitLoss:
    return evaluate_split(
        scored.module,
        dataset.val,
        block_size=scored.context_length,
        precision=precision,
        mask=dataset.val_mask,
        index=dataset.val_index,
        max_targets=max_tokens,
        token_bytes=lengths,
        whole=dataset.whole_records,
    )


def _check_same_dataset(config: ExperimentConfig, dataset: TokenDataset, scored: InferenceModel) -> None:
    if scored.dataset_fingerprint is not None and scored.dataset_fingerprint != dataset.meta.get("fingerprint"):
        raise CheckpointError(
            f"was trained on another dataset than {config.prepare.dataset_dir}; evaluate it against its own data",
            path=Path(scored.checkpoint),
        )


def as_document(ids: npt.NDArray[np.int64], start: int | None) -> npt.NDArray[np.int64]:
    """The text as a document: after the end-of-text token, where the tokenizer has one, so its first token is
    scored too and every byte counts (how lm-evaluation-harness scores a document); else from its second token."""
    return ids if start is None else np.concatenate([np.asarray([start], dtype=np.int64), ids])


def read_eval_text(config: ExperimentConfig, data: Path) -> str:
    """The text of ``--data``, read by prepare's own source stage with the experiment's format and filters."""
    from ml_playground.data_pipeline.corpus import corpus_text

    return corpus_text(config.prepare.model_copy(update={"input_path": str(data), "conditioning": "none"}))


def encode_eval_text(tokenizer: Tokenizer, text: str, data: Path) -> tuple[npt.NDArray[np.int64], tuple[str, ...]]:
    """Ids of ``text``; characters a character vocabulary lacks are counted as its unknown symbol or refused."""
    notes: tuple[str, ...] = ()
    missing = sorted(tokenizer.characters_outside(text))
    if missing:
        count = sum(text.count(char) for char in missing)
        if tokenizer.unknown_symbol is None:
            raise DataError(
                f"{count:,} character(s) ({len(missing)} distinct: {''.join(sorted(missing)[:20])!r}) are not in the "
                "checkpoint's character vocabulary, which has no unknown symbol; they cannot be scored",
                path=data,
            )
        if missing:
            notes = (f"{count:,} character(s) outside the vocabulary were scored as the unknown symbol",)
    try:
        return tokenizer.encode_array(text), notes
    except UserError as exc:
        raise DataError(exc.message, path=data) from None
