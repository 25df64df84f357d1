"""The Bundestag experiments end to end through the CLI, on real protocols from ../shared/data/bundestag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL
from tests.e2e.test_cli import assert_one_line_user_error, cli, sets

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def two_protocols(tmp_path: Path, shared_data: Path) -> Path:
    folder = tmp_path / "protocols"
    folder.mkdir()
    for name in ("19001.txt", "19009.txt"):
        (folder / name).symlink_to(shared_data / "bundestag" / name)
    return folder


def overrides(tmp_path: Path, protocols: Path) -> list[str]:
    return [
        f"prepare.input_path='{protocols}'",
        f"prepare.dataset_dir='{tmp_path / 'dataset'}'",
        f"prepare.cache_dir='{tmp_path / 'cache'}'",
        f"train.out_dir='{tmp_path / 'run'}'",
        *TINY_MODEL,
    ]


def test_loop_bundestag_char_then_sample_from_a_speaker_line(tmp_path: Path, two_protocols: Path) -> None:
    args = sets(overrides(tmp_path, two_protocols))
    loop = cli("loop", "bundestag_char", *args, "--quiet")
    assert "19009.txt: utf-8-sig" in loop.stdout
    assert "speeches:" in loop.stdout
    assert "per party:" in loop.stdout
    records = [json.loads(line) for line in (tmp_path / "dataset" / "speeches.jsonl").read_text("utf-8").splitlines()]
    assert {r["session"] for r in records} == {1, 9}
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "val_loss" in m]
    assert evals
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    prompt = "Dr. Angela Merkel, Bundeskanzlerin:"
    sampled = cli("sample", "bundestag_char", *args, "--prompt", prompt, "--quiet")
    assert sampled.stdout.startswith(prompt)
    assert len(sampled.stdout) > len(prompt) + 20
    evaluated = cli("eval", "bundestag_char", *args, "--json")
    assert json.loads(evaluated.stdout.strip().splitlines()[-1])["val_loss"] > 0


def test_bundestag_tiktoken_prepares_with_an_official_rank_file(
    tmp_path: Path, two_protocols: Path, rank_files: Path
) -> None:
    args = [
        *sets(overrides(tmp_path, two_protocols)),
        "--set",
        f"prepare.tiktoken_file='{rank_files / 'r50k_base.tiktoken'}'",
    ]
    prepared = cli("prepare", "bundestag_tiktoken", *args)
    assert "vocab 50257" in prepared.stdout
    ratio = float(prepared.stdout.split("characters/token")[0].split(",")[-1])
    assert 2.0 < ratio < 3.5  # GPT-2 merges on German
    cli("train", "bundestag_tiktoken", *args, "--set", "train.max_iters=10", "--quiet")
    assert (tmp_path / "run" / "checkpoints" / "last.json").is_file()


def test_bad_protocol_inputs_are_one_line_errors(tmp_path: Path, two_protocols: Path) -> None:
    (two_protocols / "notes.txt").write_text("Einkaufsliste: Brot, Milch\n" * 5)
    strict = [*sets(overrides(tmp_path, two_protocols)), "--set", "prepare.non_protocol='error'"]
    assert_one_line_user_error(cli("prepare", "bundestag_char", *strict, check_code=None), "notes.txt", "no 'Beginn:'")
    plain = cli("prepare", "bundestag_char", *sets(overrides(tmp_path, two_protocols)))
    assert "warning: " in plain.stdout
    assert "notes.txt: not a plenary protocol" in plain.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_bytes(b"\xff\xfe\x00\x00garbage\x00")
    result = cli("prepare", "bundestag_char", *sets(overrides(tmp_path / "e", empty)), check_code=None)
    assert_one_line_user_error(result, "x.txt")
