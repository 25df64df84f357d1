"""Questions and answers from the Bundestag's XML protocols -> conversations.

Two places in a plenary session are question and answer by design:

- **Question time** (agenda items titled "Befragung der Bundesregierung" or "Fragestunde"): a member
  asks, a member of the government (a speaker with a role: minister, state secretary) answers.
- **Interposed questions** ("Zwischenfragen"): the chair asks a speaker whether they allow a question
  from the floor, a member asks, and the speaker answers before going on with the speech.

Each pair becomes a conversation: a short system prompt naming who answers (as the protocol prints
the speaker), the question as the user turn, the answer as the assistant turn. An interposed
question's answer runs on into the rest of the speech in the protocol; the answer kept is its
paragraphs up to ``prepare.answer_max_chars`` (at least one, cut at a sentence end when a single paragraph
is longer), so the model learns an answer, not a speech.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ml_playground.data_pipeline.sources.bundestag import Speech
from ml_playground.data_pipeline.sources.chat import Conversation
from ml_playground.data_pipeline.sources.records import PRESIDING_ROLES

QUESTION_TIME = re.compile(r"Befragung der Bundesregierung|Fragestunde", re.IGNORECASE)
INTERPOSED = re.compile(r"Zwischenfrage", re.IGNORECASE)
ANSWER_MAX_CHARS = 500  # the default of prepare.answer_max_chars
MIN_CHARS = 40  # "Ja." or a bare thank-you is not a question or an answer
SYSTEM_PROMPT = "Plenarsitzung des Deutschen Bundestages. Es antwortet {who}."


@dataclass
class QaStats:
    pairs: Counter[str] = field(default_factory=Counter)  # by kind: question_time, interposed
    question_chars: list[int] = field(default_factory=list)
    answer_chars: list[int] = field(default_factory=list)

    def details(self) -> list[str]:
        if not self.question_chars:
            return ["question/answer pairs: none"]
        return [
            f"question/answer pairs: {sum(self.pairs.values()):,} (question time {self.pairs['question_time']:,}, "
            f"interposed questions {self.pairs['interposed']:,}); median characters: question "
            f"{statistics.median(self.question_chars):.0f}, answer {statistics.median(self.answer_chars):.0f}"
        ]


def _chair(speech: Speech) -> bool:
    return bool(PRESIDING_ROLES.match(speech.role))


def _who(speech: Speech) -> str:
    """The speaker as the protocol prints them, without the colon."""
    return speech.header().removesuffix(":")


def first_answer(text: str, limit: int = ANSWER_MAX_CHARS) -> str:
    """Leading paragraphs up to ``limit`` characters (at least one; a longer one is cut after a sentence)."""
    paragraphs = [p for p in text.split("\n") if p.strip()]
    kept: list[str] = []
    for paragraph in paragraphs:
        if kept and sum(len(p) + 1 for p in kept) + len(paragraph) > limit:
            break
        kept.append(paragraph)
    answer = "\n".join(kept)
    if len(answer) > limit:
        sentences = re.split(r"(?<=[.!?])\s+", answer)
        answer = sentences[0]
        for sentence in sentences[1:]:
            if len(answer) + 1 + len(sentence) > limit:
                break
            answer = f"{answer} {sentence}"
    return answer.strip()


def _pair(question: Speech, answer: Speech, kind: str, stats: QaStats, limit: int) -> Conversation | None:
    answer_text = first_answer(answer.text, limit)
    if len(question.text) < MIN_CHARS or len(answer_text) < MIN_CHARS or "?" not in question.text:
        return None
    stats.pairs[kind] += 1
    stats.question_chars.append(len(question.text))
    stats.answer_chars.append(len(answer_text))
    messages = (
        {"role": "system", "content": SYSTEM_PROMPT.format(who=_who(answer))},
        {"role": "user", "content": question.text},
        {"role": "assistant", "content": answer_text},
    )
    return Conversation(messages, f"{answer.source_file} ({answer.date}): {kind}")


def qa_conversations(
    speeches: Iterable[Speech], stats: QaStats, answer_max_chars: int = ANSWER_MAX_CHARS
) -> Iterator[Conversation]:
    """Pairs in protocol order from the speeches of the XML reader (chair and interjection records included).

    An answer keeps its leading paragraphs up to ``answer_max_chars`` characters (``first_answer``).
    """
    previous: Speech | None = None  # the last member who spoke (chair and interjections aside)
    speaker_before_chair: Speech | None = None  # who had the floor when the chair offered a question
    offered = False  # the chair has just mentioned an interposed question
    for speech in speeches:
        if speech.kind != "speech":
            continue
        if previous is not None and (speech.source_file, speech.topic) != (previous.source_file, previous.topic):
            previous, speaker_before_chair, offered = None, None, False
        if _chair(speech):
            if INTERPOSED.search(speech.text):
                offered, speaker_before_chair = True, previous
            continue
        found: Conversation | None = None
        if previous is not None and previous.speaker != speech.speaker:
            if QUESTION_TIME.search(speech.topic) and speech.role and not previous.role:
                found = _pair(previous, speech, "question_time", stats, answer_max_chars)
            elif (
                speaker_before_chair is not None
                and speech.speaker == speaker_before_chair.speaker
                and previous.speaker != speaker_before_chair.speaker
            ):
                found = _pair(previous, speech, "interposed", stats, answer_max_chars)
                speaker_before_chair = None
        if found is not None:
            yield found
        if not offered:
            speaker_before_chair = None
        offered = False
        previous = speech
