from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.errors import DataError
from ml_playground.core.tokenizer import load_tokenizer
from ml_playground.data_pipeline.meta import read_meta
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.data_pipeline.sources.text import fetch_cached
from ml_playground.data_pipeline.streaming import token_dtype

pytestmark = pytest.mark.unit


def config(tmp_path: Path, input_path: Path | str, **extra: object) -> PrepareConfig:
    return PrepareConfig(
        input_path=str(input_path),
        dataset_dir=tmp_path / "ds",
        cache_dir=tmp_path / "cache",
        **extra,  # type: ignore[arg-type]
    )


def test_char_dataset_round_trips_to_the_source(tmp_path: Path, shakespeare_slice: Path) -> None:
    report = prepare(config(tmp_path, shakespeare_slice))
    text = shakespeare_slice.read_text("utf-8")
    meta = read_meta(tmp_path / "ds")
    assert meta["dtype"] == "uint16"
    assert meta["vocab_size"] == len(set(text)) == report.vocab_size
    train = np.fromfile(tmp_path / "ds" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "ds" / "val.bin", dtype=np.uint16)
    tokenizer = load_tokenizer(tmp_path / "ds" / "tokenizer")
    assert tokenizer.decode(train.tolist()) + tokenizer.decode(val.tolist()) == text
    assert len(val) == len(text) - int(len(text) * 0.9)
    assert meta["sources"][0]["path"] == str(shakespeare_slice)
    assert "characters/token" in report.summary()


def test_rerun_is_a_no_op_until_the_input_changes(tmp_path: Path, shakespeare_slice: Path) -> None:
    first = prepare(config(tmp_path, shakespeare_slice))
    mtime = (tmp_path / "ds" / "train.bin").stat().st_mtime_ns
    again = prepare(config(tmp_path, shakespeare_slice))
    assert not first.skipped
    assert again.skipped
    assert "up to date" in again.summary()
    assert (tmp_path / "ds" / "train.bin").stat().st_mtime_ns == mtime
    shakespeare_slice.write_text(shakespeare_slice.read_text() + "\nEXTRA LINE\n")
    assert not prepare(config(tmp_path, shakespeare_slice)).skipped
    assert not prepare(config(tmp_path, shakespeare_slice, val_fraction=0.2)).skipped
    (tmp_path / "ds" / "val.bin").write_bytes(b"\x00\x00")
    assert not prepare(config(tmp_path, shakespeare_slice, val_fraction=0.2)).skipped


def test_folder_input_and_bpe(tmp_path: Path, shakespeare_text: str) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text(shakespeare_text[:20_000])
    (folder / "b.md").write_text(shakespeare_text[20_000:40_000])
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    report = prepare(config(tmp_path, folder, tokenizer="bpe", bpe_vocab_size=400))
    assert report.files == 2
    assert report.vocab_size == 400
    assert report.train_tokens + report.val_tokens < report.characters


def test_crlf_and_bom_are_normalised(tmp_path: Path) -> None:
    source = tmp_path / "w.txt"
    source.write_bytes(("\ufeff" + "line one\r\nline two\r\n" * 50).encode())
    prepare(config(tmp_path, source))
    chars = json.loads((tmp_path / "ds" / "tokenizer" / "tokenizer.json").read_text())["chars"]
    assert "\r" not in chars
    assert "\ufeff" not in chars


def test_legacy_encoding_is_detected_and_an_explicit_one_wins(tmp_path: Path) -> None:
    source = tmp_path / "latin.txt"
    source.write_bytes("Grüße aus Köln – „Straße“\n".encode("cp1252") * 40)
    report = prepare(config(tmp_path, source))
    assert report.encodings == {"cp1252": 1}
    tokenizer = load_tokenizer(tmp_path / "ds" / "tokenizer")
    assert set("Grüße aus Köln – „Straße“\n") == set(tokenizer.decode(list(range(tokenizer.vocab_size))))
    prepare(config(tmp_path, source, encoding="latin-1"))
    latin = load_tokenizer(tmp_path / "ds" / "tokenizer")
    assert "\x84" in latin.decode(list(range(latin.vocab_size)))  # the user asked for latin-1, and got it
    with pytest.raises(DataError, match="unknown encoding 'klingon'"):
        prepare(config(tmp_path, source, encoding="klingon"))
    with pytest.raises(DataError, match=r"latin\.txt: not valid utf-8 at byte 2"):
        prepare(config(tmp_path, source, encoding="utf-8"))


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "file is empty"), (b"  \n\n", "file is empty"), (b"PK\x03\x04\x00\x00binary", "looks binary")],
)
def test_bad_files_are_named_and_leave_nothing(tmp_path: Path, content: bytes, message: str) -> None:
    source = tmp_path / "bad.txt"
    source.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        prepare(config(tmp_path, source))
    assert str(source) in str(info.value)
    assert not (tmp_path / "ds").exists()


def test_missing_input_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="input not found"):
        prepare(config(tmp_path, tmp_path / "nope.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no text files"):
        prepare(config(tmp_path, tmp_path / "empty"))


def test_too_small_validation_split(tmp_path: Path) -> None:
    source = tmp_path / "tiny.txt"
    source.write_text("abcdefghij")
    with pytest.raises(DataError, match="validation split has 1 tokens"):
        prepare(config(tmp_path, source))


def test_large_vocabularies_use_uint32() -> None:
    assert token_dtype(65536) is np.uint16
    assert token_dtype(65537) is np.uint32


def test_tokenizer_choice_reaches_tiktoken(tmp_path: Path, shakespeare_slice: Path, rank_files: Path) -> None:
    with pytest.raises(DataError, match="could not fetch tiktoken encoding 'gpt2'"):
        prepare(config(tmp_path, shakespeare_slice, tokenizer="gpt2"))
    with pytest.raises(DataError, match="not the official cl100k_base rank file"):
        prepare(
            config(
                tmp_path,
                shakespeare_slice,
                tokenizer="tiktoken",
                tiktoken_encoding="cl100k_base",
                tiktoken_file=shakespeare_slice,
            )
        )
    assert not (tmp_path / "ds").exists()
    report = prepare(
        config(tmp_path, shakespeare_slice, tokenizer="gpt2", tiktoken_file=rank_files / "r50k_base.tiktoken")
    )
    assert report.vocab_size == 50257
    assert 3.0 < report.characters / (report.train_tokens + report.val_tokens) < 5.0  # GPT-2 BPE on English


class _Handler(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        body = b"downloaded corpus text\n" * 10
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean."""


@pytest.fixture
def local_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/input.txt"
    server.shutdown()
    server.server_close()


def test_url_input_is_fetched_once_and_cached(tmp_path: Path, local_server: str) -> None:
    _Handler.hits = 0
    first = fetch_cached(local_server, tmp_path / "cache")
    second = fetch_cached(local_server, tmp_path / "cache")
    assert first == second
    assert _Handler.hits == 1
    assert first.read_bytes().startswith(b"downloaded corpus")
    report = prepare(config(tmp_path, local_server))
    assert report.characters > 100
    assert _Handler.hits == 1


def test_unreachable_url_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        fetch_cached("http://127.0.0.1:9/input.txt", tmp_path, timeout_s=5)
    message = str(info.value)
    assert message.startswith("prepare.input_path: could not download http://127.0.0.1:9/input.txt")
    assert "set prepare.input_path to the local file" in message
    assert not (tmp_path / "downloads").exists() or not any((tmp_path / "downloads").iterdir())
