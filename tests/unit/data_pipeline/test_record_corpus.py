"""Header-conditioned records: prepared record by record, then read in windows that always carry their header."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_playground.configuration.models import FiltersConfig, PrepareConfig
from ml_playground.core.errors import DataError
from ml_playground.core.tokenizer import load_tokenizer
from ml_playground.data_pipeline.batches import (
    IGNORE_INDEX,
    BatchSampler,
    RecordWindows,
    TokenDataset,
    open_dataset,
    sequential_windows,
)
from ml_playground.data_pipeline.header import END_TOKEN, FIELD_TOKENS
from ml_playground.data_pipeline.meta import read_meta
from ml_playground.data_pipeline.preparer import prepare

pytestmark = pytest.mark.unit

NAMES = ["anna", "berta", "carl", "dora", "emil", "frida", "gustav", "hanna", "ida", "jakob", "karl", "luise"]
PARTIES = ["SPD", "FDP", "AfD"]
BLOCK = 64


def speeches_file(tmp_path: Path) -> Path:
    """Speeches whose every word is the speaker's name: a window's text shows whose header it sits under.
    Lengths vary from a few words (packed several to a window) to far more than a window (chunked)."""
    lines = []
    for number in range(60):
        name = NAMES[number % len(NAMES)]
        words = [name] * (3 + (number * 7) % 90)
        party = PARTIES[number % len(PARTIES)]
        record = {"speaker": name.title(), "party": party, "year": 2000 + number % 5, "text": " ".join(words)}
        lines.append(json.dumps(record))
    path = tmp_path / "speeches.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def header_config(tmp_path: Path, **extra: object) -> PrepareConfig:
    return PrepareConfig(
        input_path=str(speeches_file(tmp_path)),
        dataset_dir=tmp_path / "ds",
        format="jsonl",
        conditioning="header",
        tokenizer="bpe",
        bpe_vocab_size=300,
        val_fraction=0.2,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def dataset(tmp_path: Path) -> TokenDataset:
    prepare(header_config(tmp_path))
    return open_dataset(tmp_path / "ds")


def segments(text: str) -> list[tuple[str, str]]:
    """(speaker, text) of each header in a decoded window."""
    pattern = re.escape(FIELD_TOKENS["speaker"]) + r"([^<]*)<\|party\|>[^<]*<\|year\|>[^<]*<\|text\|>"
    parts = re.split(pattern, text)
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def test_every_window_starts_with_a_header_and_its_text_belongs_to_that_header(dataset: TokenDataset) -> None:
    tokenizer = load_tokenizer(dataset.dataset_dir / "tokenizer")
    assert dataset.train_index is not None
    windows = RecordWindows(dataset.train, dataset.train_mask, dataset.train_index, BLOCK)
    packed = 0
    for window in range(len(windows)):
        ids, keep = windows.row(window)
        used = int(np.flatnonzero(keep).max()) + 1  # the rest is padding
        text = tokenizer.decode(ids[:used].tolist())
        assert text.startswith(FIELD_TOKENS["speaker"])
        found = segments(text)
        assert found, text
        packed += len(found) > 1
        for speaker, body in found:
            words = body.replace(END_TOKEN, " ").split()
            # a chunk may start or end inside a word: every piece is part of this speaker's name
            assert all(word in speaker.lower() for word in words), (speaker, body)
            if words:  # (a last chunk can hold only the closing <|end|>)
                assert max(set(words), key=words.count) == speaker.lower(), (speaker, body)
    assert packed > 0, "short speeches share windows"


def test_header_tokens_are_never_targets_and_every_body_token_is_one_once(dataset: TokenDataset) -> None:
    assert dataset.val_index is not None
    assert dataset.val_mask is not None
    bodies = int((dataset.val_index[:, 2] - dataset.val_index[:, 1]).sum())
    assert int(dataset.val_mask.sum()) == bodies
    counted = sum(
        int((y != IGNORE_INDEX).sum())
        for _, y in sequential_windows(dataset.val, BLOCK, 3, mask=dataset.val_mask, index=dataset.val_index)
    )
    assert counted == bodies
    by_rank = [
        sum(
            int((y != IGNORE_INDEX).sum())
            for _, y in sequential_windows(
                dataset.val, BLOCK, 2, rank=rank, world_size=3, mask=dataset.val_mask, index=dataset.val_index
            )
        )
        for rank in range(3)
    ]
    assert sum(by_rank) == bodies


def test_a_long_record_is_cut_into_chunks_that_each_repeat_its_header(dataset: TokenDataset) -> None:
    assert dataset.train_index is not None
    windows = RecordWindows(dataset.train, dataset.train_mask, dataset.train_index, BLOCK)
    start, header, length = (int(v) for v in dataset.train_index[int(np.argmax(dataset.train_index[:, 2]))])
    room = BLOCK + 1 - header
    chunks = np.flatnonzero(windows.seg_header_start == start)
    assert len(chunks) == -(-(length - header) // room) > 2
    assert windows.seg_body_len[chunks].sum() == length - header


def test_batches_are_a_pure_function_of_seed_and_step_and_ranks_are_disjoint(dataset: TokenDataset) -> None:
    def sampler(**kwargs: int) -> BatchSampler:
        return BatchSampler(
            dataset.train, block_size=BLOCK, mask=dataset.train_mask, index=dataset.train_index, **kwargs
        )

    one = sampler(batch_size=4, seed=3)
    x, y = one.batch(7, 1)
    one.batch(8)
    again = sampler(batch_size=4, seed=3).batch(7, 1)
    assert torch.equal(x, again[0])
    assert torch.equal(y, again[1])
    assert x.shape == (4, BLOCK)
    halves = [sampler(batch_size=2, seed=3, rank=rank, world_size=2).batch(7, 1)[0] for rank in range(2)]
    assert torch.equal(torch.cat(halves), x)


def test_evaluation_can_be_capped_to_the_same_evenly_spaced_windows(dataset: TokenDataset) -> None:
    def targets(cap: int | None) -> list[torch.Tensor]:
        windows = sequential_windows(
            dataset.val, BLOCK, 2, mask=dataset.val_mask, index=dataset.val_index, max_targets=cap
        )
        return [y for _, y in windows]

    full, capped = targets(None), targets(3 * BLOCK)
    assert sum(len(y) for y in capped) == 3 < sum(len(y) for y in full)
    assert all(torch.equal(a, b) for a, b in zip(capped, targets(3 * BLOCK), strict=True))
    plain = [y for _, y in sequential_windows(dataset.val, BLOCK, 2, max_targets=4 * BLOCK)]
    assert sum(len(y) for y in plain) == 4


def test_speaker_dropout_leaves_the_speaker_out_of_that_share_of_headers(tmp_path: Path) -> None:
    prepare(header_config(tmp_path, speaker_dropout=0.5, topic_dropout=1.0))
    corpus = (tmp_path / "ds" / "corpus.txt").read_text("utf-8")
    headers = corpus.count("<|text|>")
    named = corpus.count(FIELD_TOKENS["speaker"])
    assert headers == 60
    assert 0.3 * headers < named < 0.7 * headers
    records = [json.loads(line) for line in (tmp_path / "ds" / "records.jsonl").read_text("utf-8").splitlines()]
    assert all(r["speaker"] for r in records), "the records keep every field; only the headers drop them"


def test_a_header_longer_than_the_window_is_one_error_naming_the_key(dataset: TokenDataset) -> None:
    assert dataset.train_index is not None
    with pytest.raises(DataError, match=r"train\.model\.block_size.*record 0 has a header of \d+ tokens"):
        RecordWindows(dataset.train, dataset.train_mask, dataset.train_index, 4)


def test_a_dataset_in_the_old_layout_or_with_a_broken_index_is_refused(tmp_path: Path, dataset: TokenDataset) -> None:
    meta_path = tmp_path / "ds" / "meta.json"
    meta = read_meta(tmp_path / "ds")
    index_path = tmp_path / "ds" / "train_index.bin"
    index_path.write_bytes(index_path.read_bytes()[:-24])
    with pytest.raises(DataError, match="record index does not match the token file"):
        open_dataset(tmp_path / "ds")
    index_path.write_bytes(b"\x00" * 5)
    with pytest.raises(DataError, match="record index is missing or truncated"):
        open_dataset(tmp_path / "ds")
    meta_path.write_text(json.dumps({**meta, "record_index": False}), encoding="utf-8")
    with pytest.raises(DataError, match="older layout"):
        open_dataset(tmp_path / "ds")


def test_preparing_again_is_a_no_op_unless_the_index_is_gone(tmp_path: Path) -> None:
    config = header_config(tmp_path)
    assert not prepare(config).skipped
    assert prepare(config).skipped
    (tmp_path / "ds" / "val_index.bin").unlink()
    assert not prepare(config).skipped
    assert (tmp_path / "ds" / "val_index.bin").is_file()


def test_records_filtered_away_entirely_are_one_error(tmp_path: Path) -> None:
    config = header_config(tmp_path).model_copy(update={"filters": FiltersConfig(parties=["Piraten"])})
    with pytest.raises(DataError, match=r"prepare\.filters: no speeches left after filtering"):
        prepare(config)
    assert not (tmp_path / "ds" / "meta.json").exists()
