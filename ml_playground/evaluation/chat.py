"""What a chat fine-tune does with questions it has not seen: does it stop, how long does it answer, in
which language.

The validation conversations prepare wrote (``val_conversations.jsonl``) are asked again without their
last assistant turn, greedily with the experiment's ``sample.repetition_penalty``, through the
checkpoint's own chat template (the one it trained with):

- ``stop_rate``: the share of answers that end with an end-of-turn token within ``max_new_tokens``;
- ``answer_tokens`` against ``reference_tokens``: mean lengths of the model's answers and the real ones;
- ``german_share``: the share of words that are common German function words (about 0.35-0.45 in
  German prose, near 0 in English), for the answers and for the references.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml_playground.core.errors import ConfigError, DataError
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.data_pipeline.chat_corpus import VAL_CONVERSATIONS
from ml_playground.families.base import InferenceModel
from ml_playground.sampling.batched import decode_many

FUNCTION_WORDS = frozenset(
    {
        "der",
        "die",
        "das",
        "und",
        "in",
        "den",
        "von",
        "zu",
        "mit",
        "sich",
        "des",
        "auf",
        "für",
        "ist",
        "im",
        "dem",
        "nicht",
        "ein",
        "eine",
        "als",
        "auch",
        "es",
        "an",
        "werden",
        "aus",
        "er",
        "hat",
        "dass",
        "sie",
        "nach",
        "wird",
        "bei",
        "einer",
        "um",
        "am",
        "sind",
        "noch",
        "wie",
        "einem",
        "über",
        "so",
        "zum",
        "war",
        "haben",
        "nur",
        "oder",
        "aber",
        "vor",
        "zur",
        "bis",
        "wir",
        "ich",
        "uns",
        "unsere",
        "wenn",
        "diese",
        "dieser",
        "wurde",
    }
)
WORD = re.compile(r"[A-Za-zÄÖÜäöüß]+")


def german_share(text: str) -> float:
    words = [word.lower() for word in WORD.findall(text)]
    return sum(word in FUNCTION_WORDS for word in words) / max(1, len(words))


@dataclass(frozen=True)
class ChatAnswer:
    question: str
    answer: str
    reference: str
    stopped: bool
    tokens: int


@dataclass(frozen=True)
class ChatEval:
    questions: int
    stop_rate: float
    answer_tokens: float
    reference_tokens: float
    german_share: float
    reference_german_share: float
    answers: list[ChatAnswer] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "questions": self.questions,
            "stop_rate": self.stop_rate,
            "answer_tokens": self.answer_tokens,
            "reference_tokens": self.reference_tokens,
            "german_share": self.german_share,
            "reference_german_share": self.reference_german_share,
        }


def read_val_conversations(dataset_dir: Path) -> list[list[dict[str, str]]]:
    path = dataset_dir / VAL_CONVERSATIONS
    try:
        lines = path.read_text("utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{VAL_CONVERSATIONS} not found (prepare this chat dataset again)", path=dataset_dir) from None
    return [json.loads(line)["messages"] for line in lines if line.strip()]


def last_answer(messages: Sequence[dict[str, str]]) -> int:
    """The position of a conversation's last assistant turn: what comes before it is the question asked."""
    return max(i for i, m in enumerate(messages) if m["role"] == "assistant")


def question_ids(model: InferenceModel, messages: Sequence[dict[str, str]]) -> list[int]:
    """The rendered chat prompt that asks for the next assistant turn."""
    if model.chat_ids is None:
        raise ConfigError("the checkpoint was trained as plain text; it has no chat template to answer through")
    return model.chat_ids(messages)


def greedy(max_new_tokens: int, repetition_penalty: float = 1.0) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=repetition_penalty)


def evaluate_chat(
    model: InferenceModel,
    conversations: Sequence[Sequence[dict[str, str]]],
    max_new_tokens: int,
    emit: Callable[[str], None] = lambda _: None,
    repetition_penalty: float = 1.0,
) -> ChatEval:
    """Ask each conversation's last assistant turn again (what came before it is the prompt).

    The questions are decoded together where the family batches (``decode_many``)."""
    lasts = [last_answer(messages) for messages in conversations]
    jobs = [
        (question_ids(model, messages[:last]), greedy(max_new_tokens, repetition_penalty))
        for messages, last in zip(conversations, lasts, strict=True)
    ]
    finished = 0

    def report(_index: int, answer: tuple[str, bool]) -> None:
        nonlocal finished
        finished += 1
        emit(f"question {finished}/{len(conversations)}: {'stopped' if answer[1] else 'ran to the limit'}")

    answers: list[ChatAnswer] = []
    for messages, last, (text, stopped) in zip(
        conversations, lasts, decode_many(model, jobs, on_done=report), strict=True
    ):
        tokens = len(model.tokenizer.encode(text))
        answers.append(ChatAnswer(messages[last - 1]["content"], text, messages[last]["content"], stopped, tokens))
    if not answers:
        raise DataError("no validation conversations to ask")
    count = len(answers)
    return ChatEval(
        count,
        sum(a.stopped for a in answers) / count,
        sum(a.tokens for a in answers) / count,
        sum(len(model.tokenizer.encode(a.reference)) for a in answers) / count,
        sum(german_share(a.answer) for a in answers) / count,
        sum(german_share(a.reference) for a in answers) / count,
        answers,
    )
