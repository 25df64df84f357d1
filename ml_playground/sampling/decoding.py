"""Token ids in, text out as it becomes final: for the terminal, the chat and the server alike.

Text is held back while it ends in an incomplete UTF-8 sequence (a byte-level token can end inside
a character) and while its tail could still become one of the stop strings, so nothing shown ever
has to be taken back.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

from ml_playground.core.tokenizer_protocol import Tokenizer

FinishReason = Literal["stop", "length"]


class TextStream:
    """Feed it token ids one by one; it returns the text that became final with each.

    A token in ``stop_ids`` ends the text: its own text is kept where ``stop_in_text`` says so (a
    header-conditioned GPT's ``<|end|>``) and dropped otherwise (a pretrained model's end-of-text).
    A stop string ends the text where it begins; the stop string itself is not part of the text.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop_ids: Collection[int] = (),
        stop_in_text: bool = False,
        stop_strings: Sequence[str] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.stop_in_text = stop_in_text
        self.stop_strings = [s for s in stop_strings if s]
        self.ids: list[int] = []
        self.shown = ""
        self.finish_reason: FinishReason | None = None
        self.tokens = 0  # tokens drawn from the model, a dropped stop token included
        # incremental decoding: the text of ids[:read] is final in ``decoded``; each push decodes only
        # ids[prefix:], the tokens after ``prefix`` giving the new ones their context (a word's leading
        # space, the rest of a multi-byte character)
        self.decoded = ""
        self.prefix = 0
        self.read = 0

    def push(self, token_id: int) -> str:
        """The newly final text after ``token_id``; sets ``finish_reason`` when the text ends."""
        if self.finish_reason is not None:
            raise RuntimeError("the text already ended")
        self.tokens += 1
        is_stop = token_id in self.stop_ids
        if is_stop and not self.stop_in_text:
            self.finish_reason = "stop"
            return self._release(self._text(), final=True)
        self.ids.append(token_id)
        text = self._text()
        cut = self._stop_string_at(text)
        if cut is not None:
            self.finish_reason = "stop"
            return self._release(text[:cut], final=True)
        if is_stop:
            self.finish_reason = "stop"
            return self._release(text, final=True)
        return self._release(text, final=False)

    def finish(self) -> str:
        """The text still held back when generation ended for its length."""
        if self.finish_reason is None:
            self.finish_reason = "length"
            return self._release(self._text(), final=True)
        return ""

    def _text(self) -> str:
        """The text of all ids so far, decoding only the tokens since the last settled point."""
        settled = self.tokenizer.decode(self.ids[self.prefix : self.read])
        tail = self.tokenizer.decode(self.ids[self.prefix :])
        if not tail.startswith(settled):  # the context changed how earlier tokens read: decode it all once
            self.decoded, self.prefix, self.read = "", 0, 0
            settled, tail = "", self.tokenizer.decode(self.ids)
        if len(tail) > len(settled) and not tail.endswith("\ufffd"):  # complete characters: settle them
            self.decoded += tail[len(settled) :]
            self.prefix, self.read = self.read, len(self.ids)
            return self.decoded
        return self.decoded + tail[len(settled) :]

    @property
    def text(self) -> str:
        return self.shown

    def _stop_string_at(self, text: str) -> int | None:
        found = [text.find(stop, len(self.shown)) for stop in self.stop_strings]
        return min((index for index in found if index >= 0), default=None)

    def _release(self, text: str, *, final: bool) -> str:
        visible = text if final else text[: len(text) - self._held_back(text)]
        if not visible.startswith(self.shown):  # a later token changed earlier characters: nothing to add
            return ""
        delta = visible[len(self.shown) :]
        self.shown = visible
        return delta

    def _held_back(self, text: str) -> int:
        """How many trailing characters may still change (an incomplete character) or become a stop string."""
        complete = text.rstrip("\ufffd")
        held = 0
        for stop in self.stop_strings:
            for size in range(min(len(stop) - 1, len(complete)), held, -1):
                if complete.endswith(stop[:size]):
                    held = size
                    break
        return len(text) - len(complete) + held
