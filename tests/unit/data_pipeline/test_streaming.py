"""Chunked preparation gives exactly what encoding the whole text at once gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.errors import DataError
from ml_playground.core.tokenizer import (
    BpeTokenizer,
    CharTokenizer,
    TiktokenTokenizer,
    load_tokenizer,
    split_for_batch_encoding,
)
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.data_pipeline.sources.normalize import normalize_text
from ml_playground.data_pipeline.sources.records import sniff_file
from ml_playground.data_pipeline.streaming import Split, iter_chunks, safe_cut

pytestmark = pytest.mark.unit

# Lines ending in spaces, blank lines, CRLF, indentation, non-ASCII: where naive cuts change tokens.
AWKWARD = "Erste Zeile  \r\nzweite\n\n  eingerückt\t\nGrüße – „Straße“ \nEnde.\nX\n" * 400


def test_safe_cut_needs_non_space_on_both_sides() -> None:
    assert safe_cut("a  \nb") == 0
    assert safe_cut("a\n b") == 0
    assert safe_cut("a\nb\n") == 2
    assert safe_cut("no newline") == 0


@pytest.mark.parametrize("chunk_bytes", [7, 100, 4096])
def test_chunks_rebuild_the_normalised_text(tmp_path: Path, chunk_bytes: int) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_bytes(AWKWARD.encode("utf-8"))
    second.write_bytes(("Zweite Datei\r\n" + AWKWARD).encode("cp1252"))
    files = [sniff_file(first, None), sniff_file(second, None)]
    assert files[1].encoding == "cp1252"
    chunks = list(iter_chunks(files, chunk_bytes=chunk_bytes))
    assert len(chunks) > 1
    whole = normalize_text(AWKWARD) + "\n" + normalize_text("Zweite Datei\r\n" + AWKWARD)
    assert "".join(chunks) == whole
    split = Split(len(whole) // 3)
    parts = list(split.parts(iter(chunks)))
    assert "".join(t for t, _ in parts) == whole[: len(whole) // 3]
    assert "".join(v for _, v in parts) == whole[len(whole) // 3 :]


def test_bpe_and_tiktoken_encode_chunks_exactly_like_the_whole(tmp_path: Path, rank_files: Path) -> None:
    source = tmp_path / "a.txt"
    source.write_text(AWKWARD)
    text = normalize_text(AWKWARD)
    chunks = list(iter_chunks([sniff_file(source, None)], chunk_bytes=50))
    bpe = BpeTokenizer.train([text], 300)
    gpt2 = TiktokenTokenizer.from_file("gpt2", rank_files / "r50k_base.tiktoken", tmp_path)
    for tokenizer in (bpe, gpt2):
        pieces = [i for chunk in chunks for i in tokenizer.encode(chunk)]
        assert pieces == tokenizer.encode(text)
    assert bpe.encode_array(text).tolist() == bpe.encode(text)
    assert "".join(split_for_batch_encoding(text, piece_chars=64)) == text


@pytest.mark.parametrize(
    ("tokenizer", "extra"), [("char", {}), ("char", {"min_char_count": 50}), ("bpe", {"bpe_vocab_size": 300})]
)
def test_prepared_files_decode_to_the_normalised_corpus(tmp_path: Path, tokenizer: str, extra: dict[str, int]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text(AWKWARD)
    (folder / "b.md").write_text("Noch ein Text.\n" * 300)
    report = prepare(PrepareConfig(input_path=str(folder), dataset_dir=tmp_path / "ds", tokenizer=tokenizer, **extra))  # type: ignore[arg-type]
    loaded = load_tokenizer(tmp_path / "ds" / "tokenizer")
    train = np.fromfile(tmp_path / "ds" / "train.bin", dtype=np.uint16).tolist()
    val = np.fromfile(tmp_path / "ds" / "val.bin", dtype=np.uint16).tolist()
    corpus = normalize_text(AWKWARD) + "\n" + "Noch ein Text.\n" * 300
    assert report.characters == len(corpus)
    decoded = loaded.decode(train) + loaded.decode(val)
    if isinstance(loaded, CharTokenizer) and loaded.unknown is not None:
        assert len(decoded) == len(corpus)
    else:
        assert decoded == corpus


def test_a_decoding_error_later_in_a_file_names_file_and_byte(tmp_path: Path) -> None:
    source = tmp_path / "late.txt"
    source.write_bytes(b"plain ascii\n" * 10 + "Grüße".encode("cp1252") + b"\n")
    with pytest.raises(DataError, match=r"late\.txt: not valid utf-8 at byte 122"):
        prepare(PrepareConfig(input_path=str(source), dataset_dir=tmp_path / "ds", encoding="utf-8"))
    assert not (tmp_path / "ds" / "train.bin").exists()
    report = prepare(PrepareConfig(input_path=str(source), dataset_dir=tmp_path / "ds2", val_fraction=0.5))
    assert report.file_encodings == {str(source): "cp1252"}  # detected although the first 64 KiB are ASCII
