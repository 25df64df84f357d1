"""Our tokenizers as Hugging Face fast tokenizers: the same ids, and the stop token as their EOS."""

from __future__ import annotations

import pytest

from ml_playground.core.tokenizer import BpeTokenizer, CharTokenizer
from ml_playground.export.hf_tokenizer import to_pretrained_tokenizer

pytestmark = pytest.mark.unit

TEXT = "<|party|>SPD<|text|>Meine Damen und Herren, die Rente ist sicher.<|end|>\n" * 30


def test_a_header_vocabulary_exports_its_end_of_speech_as_eos() -> None:
    tokenizer = BpeTokenizer.train([TEXT], 300, special_tokens=["<|party|>", "<|text|>", "<|end|>"])
    stop = tokenizer.stop_texts()
    assert stop == ["<|end|>"]
    fast = to_pretrained_tokenizer(tokenizer, eos_token=stop[0])
    assert fast.eos_token == "<|end|>"
    assert fast.eos_token_id == tokenizer.token_id("<|end|>")
    assert fast(TEXT[:80], add_special_tokens=False)["input_ids"] == tokenizer.encode(TEXT[:80])


def test_a_character_vocabulary_exports_without_eos() -> None:
    tokenizer = CharTokenizer.train("abc d")
    fast = to_pretrained_tokenizer(tokenizer)
    assert fast.eos_token is None
    assert fast.decode(fast("ab d", add_special_tokens=False)["input_ids"]) == "ab d"
