"""The CLI as a user drives it: subprocesses, real files, exit codes, one-line errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, tiny_overrides

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def cli(*args: str, check_code: int | None = 0, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "ml_playground", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=env,
        check=False,
    )
    if check_code is not None:
        assert result.returncode == check_code, result.stdout + result.stderr
    return result


def in_process(
    capsys: pytest.CaptureFixture[str], *args: str, check_code: int | None = 0
) -> subprocess.CompletedProcess[str]:
    """The same command through ``cli.main`` in this process: for the many checks of one output or error, where a
    new interpreter per call (importing PyTorch again) would only add time. Every command also runs as a
    real subprocess somewhere in these tests."""
    from ml_playground.cli import main

    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    result = subprocess.CompletedProcess(["ml_playground", *args], code, captured.out, captured.err)
    if check_code is not None:
        assert code == check_code, captured.out + captured.err
    return result


def sets(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


def assert_one_line_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_and_experiments() -> None:
    top = cli("--help")
    for command in ("prepare", "train", "sample", "loop", "eval", "experiments"):
        assert command in top.stdout
    assert "--fresh" in cli("train", "--help").stdout
    assert "--json" in cli("eval", "--help").stdout
    listed = cli("experiments").stdout.splitlines()
    assert any(line.startswith("shakespeare ") and "Tiny Shakespeare" in line for line in listed)


def test_user_path_prepare_train_sample_eval_loop(
    tmp_path: Path, shakespeare_slice: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = sets([*tiny_overrides(tmp_path, shakespeare_slice), "sample.prompt=ROMEO:"])
    prepared = cli("prepare", "shakespeare", *args)
    assert "prepared" in prepared.stdout
    assert "up to date" in in_process(capsys, "prepare", "shakespeare", *args).stdout
    trained = cli("train", "shakespeare", *args)
    assert "done at step 30" in trained.stdout
    assert "best val loss" in trained.stdout
    sampled = cli("sample", "shakespeare", *args)
    assert sampled.stdout.startswith("ROMEO:")
    assert list((tmp_path / "run" / "samples").glob("sample-*.txt"))
    evaluated = cli("eval", "shakespeare", *args, "--json")
    report = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert set(report) >= {"val_loss", "bits_per_byte", "tokens", "bytes", "checkpoint", "step"}
    assert report["tokens"] == report["bytes"] == 2999  # ASCII: one byte per character
    assert report["bits_per_byte"] == pytest.approx(report["val_loss"] / math.log(2), rel=1e-6)
    assert "val loss" in in_process(capsys, "eval", "shakespeare", *args).stdout
    check_eval_on_other_text(tmp_path, args, shakespeare_slice, capsys)
    looped = cli("loop", "shakespeare", *args, "--fresh", "--quiet")
    assert "ROMEO:" in looped.stdout
    assert "step 10/30" not in looped.stdout  # --quiet: no progress lines


def check_eval_on_other_text(tmp_path: Path, args: list[str], corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``eval --data`` and ``compare`` on a trained tiny model; bad ``--data`` is one line, exit 2."""

    def cli(*command: str, check_code: int | None = 0) -> subprocess.CompletedProcess[str]:
        return in_process(capsys, *command, check_code=check_code)

    folder = tmp_path / "other"
    folder.mkdir()
    text = corpus.read_text("utf-8")
    (folder / "a.txt").write_text(text[:3000], encoding="utf-8")
    (folder / "b.txt").write_text(text[5000:7000], encoding="utf-8")
    dataset_files = sorted(p.name for p in (tmp_path / "dataset").iterdir())
    one = json.loads(
        cli("eval", "shakespeare", *args, "--data", str(folder / "a.txt"), "--json").stdout.splitlines()[-1]
    )
    assert (one["tokens"], one["data"]) == (2999, str(folder / "a.txt"))
    both = json.loads(cli("eval", "shakespeare", *args, "--data", str(folder), "--json").stdout.splitlines()[-1])
    assert both["tokens"] == 3000 + 1 + 2000 - 1  # the files joined by a newline, every target once
    capped = json.loads(
        cli("eval", "shakespeare", *args, "--data", str(folder), "--max-tokens", "640", "--json").stdout.splitlines()[
            -1
        ]
    )
    assert capped["tokens"] < both["tokens"]
    assert sorted(p.name for p in (tmp_path / "dataset").iterdir()) == dataset_files  # nothing written there
    compared = cli("compare", "shakespeare", "shakespeare", *args, "--data", str(folder), "--out", str(tmp_path / "c"))
    assert "bits/byte" in compared.stdout
    table = json.loads((tmp_path / "c" / "compare.json").read_text("utf-8"))
    assert [row["bits_per_byte"] for row in table["rows"]] == [both["bits_per_byte"]] * 2
    assert (tmp_path / "c" / "bits_per_byte.png").read_bytes().startswith(b"\x89PNG")
    capped_table = cli("compare", "shakespeare", *args, "--data", str(folder), "--max-tokens", "640", "--json")
    (row,) = json.loads(capped_table.stdout.splitlines()[-1])["rows"]
    assert row["tokens"] < 5000
    assert row["characters_per_token"] == pytest.approx(1.0)  # of the whole text, not of the scored part
    (folder / "empty.txt").write_text("", encoding="utf-8")
    (folder / "blob.bin").write_bytes(b"\x00\x01" * 10)
    (folder / "german.txt").write_text("Grüße aus Köln", encoding="utf-8")
    for data, fragments in [
        (folder / "missing.txt", ["missing.txt", "input not found"]),
        (folder / "empty.txt", ["empty.txt", "file is empty"]),
        (folder / "blob.bin", ["blob.bin", "looks binary"]),
        (folder / "german.txt", ["german.txt", "not in the checkpoint's character vocabulary", "ß"]),
    ]:
        assert_one_line_user_error(cli("eval", "shakespeare", *args, "--data", str(data), check_code=None), *fragments)


def test_config_file_option(tmp_path: Path, shakespeare_slice: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_text(
        (REPO_ROOT / "ml_playground/experiments/shakespeare/config.toml")
        .read_text()
        .replace("max_iters = 2000", "max_iters = 5")
    )
    args = sets([o for o in tiny_overrides(tmp_path, shakespeare_slice) if not o.startswith("train.max_iters")])
    cli("prepare", "anything", "--config", str(config), *args)
    assert "done at step 5" in cli("train", "anything", "--config", str(config), *args).stdout


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing input", ["missing.txt", "input not found"]),
        ("empty file", ["empty.txt", "file is empty"]),
        ("binary file", ["blob.txt", "looks binary"]),
        ("unknown tokenizer", ["prepare.tokenizer", "'wordpiece'"]),
        ("unknown key", ["config.toml: train.model.n_layers: unknown key"]),
        ("wrong type", ["train.max_iters", "'many'", "--set train.max_iters=many"]),
        ("unknown experiment", ["unknown experiment 'nope'", "shakespeare"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    tmp_path: Path, shakespeare_slice: Path, case: str, fragments: list[str]
) -> None:
    overrides = tiny_overrides(tmp_path, shakespeare_slice)
    experiment = "shakespeare"
    if case == "missing input":
        overrides.append(f"prepare.input_path='{tmp_path / 'missing.txt'}'")
    elif case == "empty file":
        (tmp_path / "empty.txt").write_text("")
        overrides.append(f"prepare.input_path='{tmp_path / 'empty.txt'}'")
    elif case == "binary file":
        (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 4)
        overrides.append(f"prepare.input_path='{tmp_path / 'blob.txt'}'")
    elif case == "unknown tokenizer":
        overrides.append("prepare.tokenizer=wordpiece")
    elif case == "unknown key":
        overrides.append("train.model.n_layers=3")
    elif case == "wrong type":
        overrides.append("train.max_iters=many")
    else:
        experiment = "nope"
    result = cli("prepare", experiment, *sets(overrides), check_code=None)
    assert_one_line_user_error(result, *fragments)
    assert not (tmp_path / "dataset").exists()


def test_block_size_larger_than_validation_split(
    tmp_path: Path, shakespeare_slice: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = sets([*tiny_overrides(tmp_path, shakespeare_slice), "train.model.block_size=5000"])
    in_process(capsys, "prepare", "shakespeare", *args)
    result = in_process(capsys, "train", "shakespeare", *args, check_code=None)
    assert_one_line_user_error(result, "block_size 5000 is larger than the validation split (3000 tokens)")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_sampling_before_any_checkpoint(
    tmp_path: Path, shakespeare_slice: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = sets(tiny_overrides(tmp_path, shakespeare_slice))
    result = in_process(capsys, "sample", "shakespeare", *args, check_code=None)
    assert_one_line_user_error(result, "no 'best' checkpoint yet (run train first)")
    assert not (tmp_path / "run" / "samples").exists()


def test_sigint_writes_last_and_says_how_to_resume(
    tmp_path: Path, shakespeare_slice: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = [
        *tiny_overrides(tmp_path, shakespeare_slice),
        "train.max_iters=100000",
        "train.checkpoint.interval=100000",
    ]
    in_process(capsys, "prepare", "shakespeare", *sets(overrides))
    process = subprocess.Popen(
        [sys.executable, "-m", "ml_playground", "train", "shakespeare", *sets(overrides)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while (
        process.poll() is None
        and time.monotonic() < deadline
        and not (metrics.is_file() and metrics.read_text().count("\n") >= 3)
    ):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    assert "interrupted by SIGINT at step" in stdout
    assert "Resume with: ml_playground train shakespeare" in stdout
    last = json.loads((tmp_path / "run" / "checkpoints" / "last.json").read_text())
    interrupted_at = int(stdout.split("interrupted by SIGINT at step ")[1].split(";")[0])
    assert last["step"] == interrupted_at
    resumed = cli("train", "shakespeare", *sets([*overrides[:-2], f"train.max_iters={interrupted_at + 5}"]))
    assert f"(step {interrupted_at})" in resumed.stdout
    assert f"done at step {interrupted_at + 5}" in resumed.stdout


def test_export_round_trip_from_the_cli(
    tmp_path: Path, shakespeare_slice: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = sets([*tiny_overrides(tmp_path, shakespeare_slice), "train.max_iters=10"])
    in_process(capsys, "loop", "shakespeare", *args, "--quiet")
    out = tmp_path / "exported"
    first = cli("export", "shakespeare", *args, "--format", "hf", "--out", str(out))
    assert f"as hf to {out}" in first.stdout
    again = in_process(capsys, "export", "shakespeare", *args, "--format", "hf", "--out", str(out), check_code=None)
    assert_one_line_user_error(again, "exists and is not empty; use --force")
    gguf = cli("export", "shakespeare", *args, "--format", "ollama", "--out", str(out), "--force")
    assert "ollama create shakespeare -f" in gguf.stdout
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "shakespeare-f16.gguf"]
