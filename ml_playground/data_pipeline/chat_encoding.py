"""Conversations -> token ids and a loss mask through the base model's own chat template.

Targets are exactly the assistant turns' contents plus the template's end-of-turn token (ChatML:
``<|im_end|>``), so the model learns to stop where the template ends a turn; system and user tokens,
and the template's own markup, are never targets.

Templates seldom mark the assistant's part (SmolLM2's has no ``{% generation %}``), so the parts are
found by rendering: before each assistant turn the conversation so far is rendered with the
generation prompt, then with the turn. Each rendering must extend the previous one (prefix-stable);
the turn's text must appear in it as written; what follows the text up to and including the first
special token is its end of turn. A template that breaks any of that (one that rewrites earlier turns,
say) is refused in one line instead of training on a guess. Each part is tokenized on its own, which
is how the model sees it at inference: the prompt ends where the generation prompt ends, and the
answer's tokens follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from ml_playground.core.errors import ConfigError
from ml_playground.core.tokenizer import PretrainedTokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEMPLATE_KEY = "prepare.chat_template"
Turns = Literal["all", "last"]


@dataclass(frozen=True)
class EncodedConversation:
    ids: npt.NDArray[np.int64]
    mask: npt.NDArray[np.uint8]  # 1 on the assistant's tokens and their end of turn
    turn_ends: tuple[int, ...]  # token counts at which an assistant turn (with its end of turn) is complete


def load_template(value: str | None, tokenizer: PreTrainedTokenizerBase, source: str) -> str:
    """``prepare.chat_template`` (Jinja text, or a file holding it), else the tokenizer's own template."""
    if value is not None:
        if "{{" in value or "{%" in value:
            return value
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"neither a Jinja template nor a file: {value!r}", key=TEMPLATE_KEY)
        return path.read_text(encoding="utf-8")
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        raise ConfigError(f"the base tokenizer ({source}) has no chat template; set {TEMPLATE_KEY}", key=TEMPLATE_KEY)
    return template


class ChatEncoder:
    """``encode(messages)`` for one template; ``end_of_turn`` collects the end-of-turn tokens it has seen."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: str, turns: Turns = "all") -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.turns = turns
        self.special = sorted({str(t) for t in tokenizer.all_special_tokens} | _added_special(tokenizer), key=len)
        self.end_of_turn: set[str] = set()

    def render(self, messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
        try:
            text: Any = self.tokenizer.apply_chat_template(
                [dict(m) for m in messages],
                chat_template=self.template,
                add_generation_prompt=generation_prompt,
                tokenize=False,
            )
        except Exception as exc:  # jinja2 raises its own errors, and templates raise on purpose (roles)
            raise ConfigError(f"the chat template failed to render ({exc})", key=TEMPLATE_KEY) from None
        return str(text)

    def _refuse(self, problem: str) -> ConfigError:
        return ConfigError(f"the chat template {problem}, so the assistant's tokens cannot be found", key=TEMPLATE_KEY)

    def _end_of_turn(self, after: str) -> int:
        """How many characters of ``after`` end the turn: up to and including its first special token."""
        found = [(after.find(token), -len(token), token) for token in self.special if token and token in after]
        if not found:
            raise self._refuse("puts no special token after an assistant turn (nothing could teach it to stop)")
        at, negative_length, token = min(found)
        self.end_of_turn.add(token)
        return at - negative_length

    def pieces(self, messages: Sequence[dict[str, str]]) -> tuple[list[tuple[str, bool]], list[int]]:
        """(text, is_target) in order, and after which piece each trained assistant turn ends."""
        assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        trained = set(assistants if self.turns == "all" else assistants[-1:])
        pieces: list[tuple[str, bool]] = []
        turn_ends: list[int] = []
        rendered = ""
        for i in assistants:
            prompt = self.render(messages[:i], generation_prompt=True)
            if not prompt.startswith(rendered):
                raise self._refuse("is not prefix-stable (a later rendering changes an earlier turn)")
            full = self.render(messages[: i + 1], generation_prompt=False)
            if not full.startswith(prompt):
                raise self._refuse("is not prefix-stable (the turn does not extend the generation prompt)")
            turn, content = full[len(prompt) :], messages[i]["content"]
            at = turn.find(content)
            if at < 0:
                content = content.strip()
                at = turn.find(content) if content else -1
            if at < 0:
                raise self._refuse("changes the assistant's text")
            after = turn[at + len(content) :]
            stop = self._end_of_turn(after)
            target = i in trained
            pieces += [(prompt[len(rendered) :] + turn[:at], False), (content + after[:stop], target)]
            pieces.append((after[stop:], False))
            if target:
                turn_ends.append(len(pieces) - 1)
            rendered = full
        return pieces, turn_ends

    def encode(self, messages: Sequence[dict[str, str]]) -> EncodedConversation:
        pieces, turn_ends = self.pieces(messages)
        encoded = PretrainedTokenizer(self.tokenizer, "").encode_batch([text for text, _ in pieces])
        lengths = np.cumsum([len(ids) for ids in encoded])
        ids = np.asarray([i for part in encoded for i in part], dtype=np.int64)
        mask = np.concatenate(
            [np.full(len(part), int(target), dtype=np.uint8) for part, (_, target) in zip(encoded, pieces, strict=True)]
        )
        return EncodedConversation(ids, mask, tuple(int(lengths[p]) for p in turn_ends))


def _added_special(tokenizer: PreTrainedTokenizerBase) -> set[str]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {str(token.content) for token in decoder.values() if getattr(token, "special", False)}


@dataclass
class FitCounts:
    kept: int = 0
    cut: int = 0  # trained on their first turns only: the whole conversation is longer than the limit
    dropped: int = 0  # not even the first trained turn fits


def fit(encoded: EncodedConversation, limit: int, counts: FitCounts) -> EncodedConversation | None:
    """At most ``limit`` tokens, cut after the last assistant turn that fits; None (counted) when none fits."""
    if len(encoded.ids) <= limit:
        counts.kept += 1
        return encoded
    ends = [end for end in encoded.turn_ends if end <= limit]
    if not ends:
        counts.dropped += 1
        return None
    counts.cut += 1
    end = ends[-1]
    return EncodedConversation(encoded.ids[:end], encoded.mask[:end], tuple(ends))
