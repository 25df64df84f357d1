from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml_playground.core.errors import DataError, UserError
from ml_playground.core.tokenizer import (
    SPEC_FILE,
    BpeTokenizer,
    CharTokenizer,
    TiktokenTokenizer,
    load_tokenizer,
)
from ml_playground.core.tokenizer_protocol import Tokenizer

pytestmark = pytest.mark.unit

CORPUS = "Wer reitet so spät durch Nacht und Wind?\nEs ist der Vater mit seinem Kind. — «ß» 😀\n" * 20


@pytest.fixture(scope="module")
def bpe() -> BpeTokenizer:
    return BpeTokenizer.train([CORPUS], vocab_size=300)


def write_rank_file(path: Path, merges: list[bytes]) -> Path:
    """A real tiktoken rank file: every single byte, then the given merged tokens."""
    tokens = [bytes([b]) for b in range(256)] + merges
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))
    return path


@given(st.text(alphabet=sorted(set(CORPUS)), max_size=200))
def test_char_round_trip(text: str) -> None:
    tokenizer = CharTokenizer.train(CORPUS)
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode_array(text).tolist() == ids
    assert all(0 <= i < tokenizer.vocab_size for i in ids)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_bpe_round_trips_any_text(bpe: BpeTokenizer, text: str) -> None:
    assert bpe.decode(bpe.encode(text)) == text
    assert bpe.encode_array(text).tolist() == bpe.encode(text)


def test_bpe_learns_merges_and_compresses(bpe: BpeTokenizer) -> None:
    assert bpe.kind == "bpe"
    assert 256 < bpe.vocab_size <= 300
    assert len(bpe.encode(CORPUS)) < len(CORPUS.encode()) / 2


@given(st.text(max_size=120))
def test_tiktoken_local_rank_file_round_trips(text: str) -> None:
    tokenizer = TIKTOKEN
    assert tokenizer.decode(tokenizer.encode(text)) == text


TIKTOKEN_DIR = Path(__import__("tempfile").mkdtemp())
TIKTOKEN = TiktokenTokenizer.from_file("gpt2", write_rank_file(TIKTOKEN_DIR / "r.tiktoken", [b"th", b"he", b" t"]))


def test_tiktoken_uses_the_merges() -> None:
    assert TIKTOKEN.encode("he") == [257]
    assert TIKTOKEN.vocab_size == 260  # 259 ranks + <|endoftext|>
    assert TIKTOKEN.kind == "tiktoken"
    assert TIKTOKEN.encode_array("th").tolist() == [256]


@pytest.mark.parametrize("kind", ["char", "bpe", "tiktoken"])
def test_save_and_load_give_the_same_tokenizer(tmp_path: Path, kind: str, bpe: BpeTokenizer) -> None:
    tokenizers: dict[str, Tokenizer] = {"char": CharTokenizer.train(CORPUS), "bpe": bpe, "tiktoken": TIKTOKEN}
    original = tokenizers[kind]
    original.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert isinstance(again, Tokenizer)
    assert again.kind == kind
    assert again.vocab_size == original.vocab_size
    sample = CORPUS[:80]
    assert again.encode(sample) == original.encode(sample)
    assert again.decode(again.encode(sample)) == sample


def test_saved_tiktoken_copy_is_self_contained(tmp_path: Path) -> None:
    TIKTOKEN.save(tmp_path / "a")
    loaded = load_tokenizer(tmp_path / "a")
    loaded.save(tmp_path / "a")  # saving onto its own copy must not break it
    assert load_tokenizer(tmp_path / "a").encode("the") == TIKTOKEN.encode("the")


def test_char_tokenizer_names_unknown_characters() -> None:
    tokenizer = CharTokenizer.train("abc")
    with pytest.raises(UserError, match="'xz'"):
        tokenizer.encode("axz")
    with pytest.raises(UserError, match="'é'"):
        tokenizer.encode("é")  # below the largest code point in vocab? no: above 'c', outside the table
    with pytest.raises(UserError, match="'B'"):
        tokenizer.encode("aB")  # inside the table range, not in the vocabulary


def test_tiktoken_offline_fails_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        TiktokenTokenizer.by_name("gpt2", tmp_path)
    message = str(info.value)
    assert "could not fetch tiktoken encoding 'gpt2'" in message
    assert "prepare.tiktoken_file" in message
    assert "\n" not in message


def test_tiktoken_unknown_encoding_name(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown tiktoken encoding 'nope'"):
        TiktokenTokenizer.by_name("nope", tmp_path)


def test_tiktoken_local_file_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="tiktoken rank file not found"):
        TiktokenTokenizer.from_file("gpt2", tmp_path / "missing")
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("this is not a rank file\n")
    with pytest.raises(DataError, match="not a tiktoken rank file"):
        TiktokenTokenizer.from_file("gpt2", bad)
    with pytest.raises(UserError, match="not 'cl100k_base'"):
        TiktokenTokenizer.from_file("cl100k_base", bad)


def test_load_tokenizer_errors_name_the_spec(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="tokenizer spec not found"):
        load_tokenizer(tmp_path)
    (tmp_path / SPEC_FILE).write_text("{not json")
    with pytest.raises(DataError, match="unreadable tokenizer spec"):
        load_tokenizer(tmp_path)
    (tmp_path / SPEC_FILE).write_text(json.dumps({"kind": "sentencepiece"}))
    with pytest.raises(DataError, match="unknown tokenizer kind 'sentencepiece'"):
        load_tokenizer(tmp_path)
    (tmp_path / SPEC_FILE).write_text(json.dumps({"kind": "tiktoken", "encoding": "gpt2"}))
    with pytest.raises(DataError, match="could not fetch"):
        load_tokenizer(tmp_path, cache_dir=tmp_path / "cache")


def test_tiktoken_by_name_uses_the_cache_dir_and_saves_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken's loader reads its cache location from the environment: it must see ours, then the old value."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/users/own/cache")
    seen: list[str] = []

    def loader(name: str) -> tiktoken.Encoding:
        seen.append(os.environ["TIKTOKEN_CACHE_DIR"])
        return TIKTOKEN._encoding

    tokenizer = TiktokenTokenizer.by_name("gpt2", tmp_path, get_encoding=loader)
    assert seen == [str(tmp_path / "tiktoken")]
    assert os.environ["TIKTOKEN_CACHE_DIR"] == "/users/own/cache"
    assert tokenizer.encode("the") == TIKTOKEN.encode("the")
    tokenizer.save(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / SPEC_FILE).read_text()) == {"kind": "tiktoken", "encoding": "gpt2"}


def test_batch_encoding_of_large_text_equals_whole_encoding(bpe: BpeTokenizer, shakespeare_text: str) -> None:
    from ml_playground.core.tokenizer import split_for_batch_encoding

    text = shakespeare_text[:300_000]
    pieces = split_for_batch_encoding(text, piece_chars=10_000)
    assert len(pieces) > 10
    assert "".join(pieces) == text
    assert all(p.endswith("\n") for p in pieces[:-1])
    whole = bpe._tokenizer.encode(text).ids
    assert bpe.encode_array(text).tolist() == whole
    assert split_for_batch_encoding("a\n" * 10, piece_chars=4)[-1].endswith("a\n")
    assert split_for_batch_encoding("  \n  " * 10, piece_chars=4) == ["  \n  " * 10]
    one_line = "x" * 200_000
    assert split_for_batch_encoding(one_line, piece_chars=1000) == [one_line]
