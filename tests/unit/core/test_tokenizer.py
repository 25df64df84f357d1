from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml_playground.core.errors import DataError, UserError
from ml_playground.core.tokenizer import (
    SPEC_FILE,
    BpeTokenizer,
    CharTokenizer,
    PretrainedTokenizer,
    TiktokenTokenizer,
    load_tokenizer,
)
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm

pytestmark = pytest.mark.unit

CORPUS = "Wer reitet so spät durch Nacht und Wind?\nEs ist der Vater mit seinem Kind. — «ß» 😀\n" * 20


@pytest.fixture(scope="module")
def bpe() -> BpeTokenizer:
    return BpeTokenizer.train([CORPUS], vocab_size=300)


@pytest.fixture(scope="module")
def gpt2(rank_files: Path, tmp_path_factory: pytest.TempPathFactory) -> TiktokenTokenizer:
    """GPT-2's encoding from the official rank file (read out of the openai-whisper sdist), offline."""
    return TiktokenTokenizer.from_file("gpt2", rank_files / "r50k_base.tiktoken", tmp_path_factory.mktemp("cache"))


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


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=120))
def test_tiktoken_local_rank_file_round_trips(gpt2: TiktokenTokenizer, text: str) -> None:
    assert gpt2.decode(gpt2.encode(text)) == text


@pytest.mark.parametrize(
    ("name", "file", "vocab_size", "ids"),
    [
        ("gpt2", "r50k_base", 50257, [15496, 995]),
        ("r50k_base", "r50k_base", 50257, [15496, 995]),
        ("cl100k_base", "cl100k_base", 100277, [9906, 1917]),
        ("o200k_base", "o200k_base", 200019, [13225, 2375]),
    ],
)
def test_official_encodings_from_local_rank_files_match_tiktoken(
    rank_files: Path, tmp_path: Path, name: str, file: str, vocab_size: int, ids: list[int]
) -> None:
    tokenizer = TiktokenTokenizer.from_file(name, rank_files / f"{file}.tiktoken", tmp_path)
    assert tokenizer.kind == "tiktoken"
    assert tokenizer.vocab_size == vocab_size
    assert tokenizer.encode("Hello world") == ids  # the ids tiktoken documents for these encodings
    assert tokenizer.encode_array("Hello world").tolist() == ids
    german = "Sehr geehrte Damen und Herren, „Grüße“ – Straße"
    assert tokenizer.decode(tokenizer.encode(german)) == german


def test_gzipped_rank_file_is_read(rank_files: Path, tmp_path: Path) -> None:
    packed = tmp_path / "cl100k_base.tiktoken.gz"
    packed.write_bytes(gzip.compress((rank_files / "cl100k_base.tiktoken").read_bytes()))
    tokenizer = TiktokenTokenizer.from_file("cl100k_base", packed, tmp_path / "cache")
    assert tokenizer.encode("Hello world") == [9906, 1917]
    tokenizer.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "ranks.tiktoken").read_bytes() == (rank_files / "cl100k_base.tiktoken").read_bytes()


@pytest.mark.parametrize("kind", ["char", "bpe", "tiktoken"])
def test_save_and_load_give_the_same_tokenizer(
    tmp_path: Path, kind: str, bpe: BpeTokenizer, gpt2: TiktokenTokenizer
) -> None:
    tokenizers: dict[str, Tokenizer] = {"char": CharTokenizer.train(CORPUS), "bpe": bpe, "tiktoken": gpt2}
    original = tokenizers[kind]
    original.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok", tmp_path / "cache")
    assert isinstance(again, Tokenizer)
    assert again.kind == kind
    assert again.vocab_size == original.vocab_size
    sample = CORPUS[:80]
    assert again.encode(sample) == original.encode(sample)
    assert again.decode(again.encode(sample)) == sample


def test_saved_tiktoken_copy_is_self_contained(tmp_path: Path, gpt2: TiktokenTokenizer) -> None:
    gpt2.save(tmp_path / "a")
    loaded = load_tokenizer(tmp_path / "a", tmp_path / "cache")
    loaded.save(tmp_path / "a")  # saving onto its own copy must not break it
    assert load_tokenizer(tmp_path / "a", tmp_path / "other-cache").encode("the") == gpt2.encode("the")


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


def test_tiktoken_local_file_problems(tmp_path: Path, rank_files: Path) -> None:
    with pytest.raises(DataError, match="tiktoken rank file not found"):
        TiktokenTokenizer.from_file("gpt2", tmp_path / "missing", tmp_path)
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("dGg= 256\n")
    with pytest.raises(DataError, match=r"bad\.tiktoken: not the official r50k_base rank file"):
        TiktokenTokenizer.from_file("gpt2", bad, tmp_path)
    with pytest.raises(DataError, match="not the official cl100k_base rank file"):
        TiktokenTokenizer.from_file("cl100k_base", rank_files / "o200k_base.tiktoken", tmp_path)
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"bad\.gz: not a gzip file"):
        TiktokenTokenizer.from_file("cl100k_base", tmp_path / "bad.gz", tmp_path)
    with pytest.raises(UserError, match="not 'llama3'"):
        TiktokenTokenizer.from_file("llama3", bad, tmp_path)


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


def test_tiktoken_by_name_reads_its_cache_offline_and_saves_by_name(
    tmp_path: Path, rank_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache filled once (here from the local rank file, as a first online run would) serves later runs offline;
    tiktoken reads the cache location from the environment: it must see ours, then the user's value again."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/users/own/cache")
    TiktokenTokenizer.from_file("r50k_base", rank_files / "r50k_base.tiktoken", tmp_path)
    tokenizer = TiktokenTokenizer.by_name("r50k_base", tmp_path)
    assert os.environ["TIKTOKEN_CACHE_DIR"] == "/users/own/cache"
    assert tokenizer.encode("Hello world") == [15496, 995]
    tokenizer.save(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / SPEC_FILE).read_text()) == {"kind": "tiktoken", "encoding": "r50k_base"}
    assert load_tokenizer(tmp_path / "tok", tmp_path).encode("Hello world") == [15496, 995]


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


def test_unknown_symbol_handling() -> None:
    with pytest.raises(DataError, match="unknown symbol '#' is not in the vocabulary"):
        CharTokenizer(["a", "b"], unknown="#")
    tokenizer = CharTokenizer(["a", "b", "\ufffd"], unknown="\ufffd")
    assert tokenizer.decode(tokenizer.encode("a😀c b")) == "a\ufffd\ufffd\ufffdb"  # beyond and inside the table


def test_a_seeded_cache_is_reused(rank_files: Path, tmp_path: Path) -> None:
    first = TiktokenTokenizer.from_file("gpt2", rank_files / "r50k_base.tiktoken", tmp_path)
    seeded = next((tmp_path / "tiktoken").iterdir())
    mtime = seeded.stat().st_mtime_ns
    second = TiktokenTokenizer.from_file("gpt2", rank_files / "r50k_base.tiktoken", tmp_path)
    assert seeded.stat().st_mtime_ns == mtime
    assert first.encode("Hallo") == second.encode("Hallo")


def test_training_in_pieces_learns_the_merges_of_the_whole_text(shakespeare_text: str) -> None:
    from tokenizers import Tokenizer as HfTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    text = shakespeare_text[:300_000]  # several 64K pieces for the trainer
    ours = BpeTokenizer.train([text], vocab_size=600)
    whole = HfTokenizer(models.BPE())
    whole.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    whole.train_from_iterator([text], trainer)
    assert ours.backend.get_vocab() == whole.get_vocab()
    assert ours.encode_array(text).tolist() == whole.encode(text).ids


@pytest.fixture(scope="module")
def every_tokenizer(
    bpe: BpeTokenizer, gpt2: TiktokenTokenizer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Tokenizer]:
    folder = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny"), [SAMPLE * 20], vocab_size=300)
    header_bpe = BpeTokenizer.train([SAMPLE * 20], 300, special_tokens=["<|party|>", "<|end|>"])
    return {
        "char": CharTokenizer.train(SAMPLE + "€", min_count=1),
        "bpe": bpe,
        "header bpe": header_bpe,
        "tiktoken": gpt2,
        "hf": PretrainedTokenizer.from_pretrained(str(folder)),
    }


SAMPLE = "Der Bundestag möge beschließen: Mehr Brücken für alle — sofort! 12,5 % €\n"


@pytest.mark.parametrize("name", ["char", "bpe", "header bpe", "tiktoken", "hf"])
def test_every_tokenizer_answers_the_whole_interface(every_tokenizer: dict[str, Tokenizer], name: str) -> None:
    """What the package asks of a tokenizer is one method each, consistent with its encode and decode."""
    tokenizer = every_tokenizer[name]
    assert isinstance(tokenizer, Tokenizer)
    ids = tokenizer.encode(SAMPLE)
    assert tokenizer.encode_batch([SAMPLE, SAMPLE[:10]]) == [ids, tokenizer.encode(SAMPLE[:10])]
    lengths = tokenizer.token_byte_lengths()
    assert lengths.shape == (tokenizer.vocab_size,)
    assert int(lengths[ids].sum()) == len(SAMPLE.encode("utf-8"))  # the denominator of bits per byte
    assert tokenizer.to_backend().encode(SAMPLE, add_special_tokens=False).ids == ids  # what export writes
    assert tokenizer.token_id("<|no such token|>") is None
    assert tokenizer.characters_outside(SAMPLE) == set()
    for stop in tokenizer.stop_texts():
        stop_id = tokenizer.token_id(stop)
        assert stop_id is not None
        assert lengths[stop_id] == 0  # a stop stands for no text
    expected_stops = {"char": [], "bpe": [], "header bpe": ["<|end|>"], "tiktoken": ["<|endoftext|>"]}
    assert tokenizer.stop_texts() == expected_stops.get(name, [tokenizer.decode([tokenizer.eos_token_id or 0])])
    assert (tokenizer.eos_token_id is not None) == (name == "hf")


def test_a_character_vocabulary_names_what_it_lacks() -> None:
    strict, lenient = CharTokenizer.train("abc"), CharTokenizer.train("abcc", min_count=2)
    assert strict.characters_outside("abxyz") == {"x", "y", "z"}
    assert strict.unknown_symbol is None
    assert lenient.unknown_symbol is not None
    assert lenient.characters_outside("ab") == {"a", "b"}


def test_a_hole_in_tiktoken_ranks_stands_for_no_bytes() -> None:
    import tiktoken

    holed = tiktoken.Encoding(
        "holed", pat_str=r"\S+|\s+", mergeable_ranks={b"a": 0, b"b": 2, b"ab": 3}, special_tokens={"<|endoftext|>": 4}
    )
    tokenizer = TiktokenTokenizer(holed, "holed")
    assert tokenizer.token_byte_lengths().tolist() == [1, 0, 1, 2, 0]
    assert tokenizer.stop_texts() == ["<|endoftext|>"]


def test_a_slow_pretrained_tokenizer_is_encoded_one_by_one_and_has_no_backend_to_export() -> None:
    from transformers import PreTrainedTokenizer

    class Letters(PreTrainedTokenizer):  # type: ignore[misc]
        """A Python (slow) tokenizer whose tokens are letters behind SentencePiece's word marker."""

        def __init__(self) -> None:
            self.vocab = {"<unk>": 0, "</s>": 1, "▁a": 2, "▁b": 3, "c": 4}
            super().__init__(unk_token="<unk>", eos_token="</s>")

        @property
        def vocab_size(self) -> int:
            return len(self.vocab)

        def get_vocab(self) -> dict[str, int]:
            return dict(self.vocab)

        def _tokenize(self, text: str, **kwargs: object) -> list[str]:
            return ["▁" + c if c in "ab" else c for c in text if c != " "]

        def _convert_token_to_id(self, token: str) -> int:
            return self.vocab.get(token, 0)

        def _convert_id_to_token(self, index: int) -> str:
            return {v: k for k, v in self.vocab.items()}[index]

        def convert_tokens_to_string(self, tokens: list[str]) -> str:
            return "".join(tokens).replace("▁", " ")

    tokenizer = PretrainedTokenizer(Letters(), "letters")
    assert tokenizer.encode_batch(["a b", "c"]) == [tokenizer.encode("a b"), tokenizer.encode("c")]
    lengths = tokenizer.token_byte_lengths()
    assert lengths[2] == len(tokenizer.decode([2]).encode("utf-8"))  # not byte-level: decoded
    assert lengths[1] == 0  # the end of text stands for no text
    with pytest.raises(UserError, match="letters: a slow"):
        tokenizer.to_backend()
