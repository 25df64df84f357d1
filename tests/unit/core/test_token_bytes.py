"""Bytes per token for every tokenizer kind, and bits per byte computed from them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ml_playground.core.devices import Precision
from ml_playground.core.token_bytes import byte_level_alphabet
from ml_playground.core.tokenizer import BpeTokenizer, CharTokenizer, PretrainedTokenizer, TiktokenTokenizer
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.data_pipeline.header import SPECIAL_TOKENS
from ml_playground.families.gpt.model import GPT, GPTConfig
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm
from ml_playground.training.evaluation import evaluate_split

pytestmark = pytest.mark.unit

GERMAN = "Sehr geehrte Damen und Herren! Die Größe der Straße – „ja“ – kostet 12 €.\nÜbermorgen, ß."
CPU = Precision(torch.device("cpu"), torch.float32)


def assert_bytes_add_up(tokenizer: Tokenizer, text: str) -> None:
    """Summed over the ids of any text, the lengths are the text's UTF-8 bytes."""
    ids = tokenizer.encode(text)
    assert int(tokenizer.token_byte_lengths()[ids].sum()) == len(text.encode("utf-8"))


def test_the_byte_level_alphabet_covers_every_byte_once() -> None:
    alphabet = byte_level_alphabet()
    assert sorted(alphabet.values()) == list(range(256))
    assert alphabet["Ġ"] == ord(" ")
    assert alphabet["a"] == ord("a")


def test_char_bpe_and_pretrained_lengths_add_up_to_the_utf8_bytes(tmp_path: Path) -> None:
    assert_bytes_add_up(CharTokenizer.train(GERMAN), GERMAN)
    bpe = BpeTokenizer.train([GERMAN * 3], 300, SPECIAL_TOKENS)
    assert_bytes_add_up(bpe, GERMAN)
    lengths = bpe.token_byte_lengths()
    assert all(lengths[bpe.token_id(token)] == 0 for token in SPECIAL_TOKENS)  # type: ignore[index]
    hf = PretrainedTokenizer.from_pretrained(str(build_tiny_causal_lm(tmp_path / "tiny", [GERMAN * 3])))
    assert_bytes_add_up(hf, GERMAN)
    assert hf.token_byte_lengths()[hf.eos_token_id] == 0  # type: ignore[index]


def test_tiktoken_lengths_add_up_and_its_special_token_has_none(rank_files: Path, tmp_path: Path) -> None:
    tokenizer = TiktokenTokenizer.from_file("gpt2", rank_files / "r50k_base.tiktoken", tmp_path)
    assert_bytes_add_up(tokenizer, GERMAN)
    assert tokenizer.token_byte_lengths()[50256] == 0  # <|endoftext|>


def tiny_model(vocab_size: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()


def test_bits_per_byte_of_a_char_model_on_ascii_is_the_loss_over_ln2() -> None:
    text = "the quick brown fox jumps over the lazy dog. " * 5
    tokenizer = CharTokenizer.train(text)
    ids = tokenizer.encode_array(text)
    model = tiny_model(tokenizer.vocab_size)
    result = evaluate_split(model, ids, block_size=16, precision=CPU, token_bytes=tokenizer.token_byte_lengths())
    assert result.bytes == len(text) - 1 == result.tokens
    assert result.bits_per_byte == pytest.approx(result.loss / math.log(2), rel=1e-6)


def test_bits_per_byte_of_a_bpe_model_matches_a_hand_computation() -> None:
    text = GERMAN * 2
    tokenizer = BpeTokenizer.train([text], 280)
    ids = tokenizer.encode_array(text)
    model = tiny_model(tokenizer.vocab_size)
    result = evaluate_split(model, ids, block_size=16, precision=CPU, token_bytes=tokenizer.token_byte_lengths())
    nats = 0.0
    targets = len(ids) - 1
    assert targets % 16 != 0  # so the last window is the one that ends at the end
    with torch.no_grad():
        for start in range(0, targets, 16):
            new = min(16, targets - start)  # targets this window adds; the last one sees 16 tokens all the same
            window = torch.from_numpy(ids[start + new - 16 : start + new + 1].astype(np.int64))
            logits = model(window[None, :-1])[0]
            nats += float(F.cross_entropy(logits[-new:], window[1:][-new:], reduction="sum"))
    target_bytes = len(tokenizer.decode(ids[1:].tolist()).encode("utf-8"))
    assert result.bytes == target_bytes
    assert result.bits_per_byte == pytest.approx(nats / math.log(2) / target_bytes, rel=1e-5)


def test_a_batch_run_a_window_at_a_time_scores_the_same() -> None:
    """Large vocabularies are scored a few windows per forward pass (the logits' memory); the sums are the same."""
    tokenizer = CharTokenizer.train("abcdefgh ijk")
    model = tiny_model(tokenizer.vocab_size)
    ids = np.array(tokenizer.encode("abc defg hijk " * 40), dtype=np.uint32)
    lengths = tokenizer.token_byte_lengths()
    whole = evaluate_split(model, ids, block_size=16, precision=CPU, token_bytes=lengths)
    one_window = 4 * 16 * tokenizer.vocab_size  # the float32 logits of one window of 16
    pieces = evaluate_split(model, ids, block_size=16, precision=CPU, token_bytes=lengths, logits_bytes=one_window)
    assert pieces.tokens == whole.tokens == len(ids) - 1
    assert pieces.loss == pytest.approx(whole.loss, rel=1e-6)
    assert pieces.bits_per_byte == pytest.approx(whole.bits_per_byte, rel=1e-6)
