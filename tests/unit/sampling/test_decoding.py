from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_playground.core.tokenizer import BpeTokenizer, CharTokenizer
from ml_playground.sampling.decoding import TextStream

pytestmark = pytest.mark.unit

CHARS = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .\n")


def feed(stream: TextStream, text: str, tokenizer: CharTokenizer = CHARS) -> list[str]:
    deltas = []
    for token in tokenizer.encode(text):
        deltas.append(stream.push(token))
        if stream.finish_reason is not None:
            break
    return deltas


def test_text_grows_one_character_per_token_and_ends_for_its_length() -> None:
    stream = TextStream(CHARS)
    assert feed(stream, "hello") == ["h", "e", "l", "l", "o"]
    assert stream.finish() == ""
    assert (stream.text, stream.finish_reason, stream.tokens) == ("hello", "length", 5)


def test_a_stop_string_is_held_back_while_it_may_begin_and_cut_where_it_does() -> None:
    stream = TextStream(CHARS, stop_strings=["end."])
    deltas = feed(stream, "we sends. the end. more")
    # "end" of "sends." is held back until the "s" shows it is not the stop string...
    assert deltas[3:8] == ["s", "", "", "", "ends"]
    # ...and the stop string itself never appears.
    assert "".join(deltas) == "we sends. the "
    assert (stream.text, stream.finish_reason) == ("we sends. the ", "stop")
    with pytest.raises(RuntimeError, match="already ended"):
        stream.push(0)


def test_a_held_back_prefix_is_released_when_generation_ends_for_its_length() -> None:
    stream = TextStream(CHARS, stop_strings=["xyz"])
    assert "".join(feed(stream, "abcxy")) == "abc"
    assert stream.finish() == "xy"
    assert (stream.text, stream.finish_reason) == ("abcxy", "length")
    assert stream.finish() == ""


@pytest.mark.parametrize(("stop_in_text", "expected"), [(False, "ab"), (True, "ab.")])
def test_a_stop_token_ends_the_text_with_or_without_its_own_text(stop_in_text: bool, expected: str) -> None:
    stop = CHARS.encode(".")[0]
    stream = TextStream(CHARS, stop_ids={stop}, stop_in_text=stop_in_text)
    feed(stream, "ab.cd")
    assert (stream.text, stream.finish_reason, stream.tokens) == (expected, "stop", 3)


def test_incomplete_characters_are_held_back_until_their_bytes_are_complete() -> None:
    bpe = BpeTokenizer.train(["plain ascii words only"], vocab_size=260)
    ids = bpe.encode("aü€b")
    assert len(ids) > 4  # ü and € are several byte tokens in this vocabulary
    stream = TextStream(bpe)
    deltas = [stream.push(token) for token in ids]
    assert all("\ufffd" not in delta for delta in deltas)
    assert [d for d in deltas if d] == ["a", "ü", "€", "b"]
    assert stream.text == "aü€b"


class CountingTokenizer:
    """Our BPE, counting how many ids each decode call is given (the work of streaming a text)."""

    def __init__(self, inner: BpeTokenizer) -> None:
        self.inner = inner
        self.decoded = 0

    def decode(self, ids: list[int]) -> str:
        self.decoded += len(ids)
        return self.inner.decode(ids)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


GERMAN = "Sehr geehrte Frau Präsidentin! Meine Damen und Herren, wir müssen über Brücken reden. 😀 ß ü ö\n"
BPE = BpeTokenizer.train([GERMAN * 20], vocab_size=320)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=BPE.vocab_size - 1), max_size=60))
def test_streamed_text_is_always_the_decoding_of_every_token_so_far(ids: list[int]) -> None:
    stream = TextStream(BPE)
    for token in ids:
        stream.push(token)
    stream.finish()
    assert stream.text == BPE.decode(ids)


def test_streaming_decodes_each_token_a_bounded_number_of_times() -> None:
    counting = CountingTokenizer(BPE)
    ids = BPE.encode(GERMAN * 8)
    stream = TextStream(counting)  # type: ignore[arg-type]
    for token in ids:
        stream.push(token)
    stream.finish()
    assert stream.text == GERMAN * 8
    assert counting.decoded < 8 * len(ids)  # decoding all so far at every token would be len(ids)**2 / 2
