"""The CLI in process: dispatch, output and exit codes (the e2e tests drive it as a subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_playground.cli import build_parser, main
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.unit


def sets(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


def test_every_command_has_the_common_options() -> None:
    parser = build_parser()
    for command in ("prepare", "train", "sample", "loop", "eval"):
        args = parser.parse_args([command, "shakespeare", "--set", "a.b=1", "--set", "c.d=2", "--quiet"])
        assert args.overrides == ["a.b=1", "c.d=2"]
        assert args.quiet is True
    with pytest.raises(SystemExit):
        parser.parse_args([])


def test_commands_in_process(tmp_path: Path, shakespeare_slice: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = sets([*tiny_overrides(tmp_path, shakespeare_slice), "train.max_iters=10", "sample.prompt=ROMEO:"])
    assert main(["experiments"]) == 0
    assert main(["prepare", "shakespeare", *args]) == 0
    assert main(["train", "shakespeare", *args, "--quiet"]) == 0
    assert main(["sample", "shakespeare", *args, "--quiet"]) == 0
    assert main(["eval", "shakespeare", *args, "--json"]) == 0
    out = capsys.readouterr().out
    assert "shakespeare" in out
    assert "ROMEO:" in out
    assert "wrote 1 sample" not in out  # --quiet
    assert json.loads(out.strip().splitlines()[-1])["step"] > 0
    assert main(["loop", "shakespeare", *args]) == 0
    looped = capsys.readouterr().out
    assert "up to date" in looped
    assert "already trained to step 10" in looped
    assert main(["sample", "shakespeare", *args]) == 0
    assert "wrote 1 sample(s) to" in capsys.readouterr().out
    compared = ["compare", "shakespeare", *args, "--data", str(shakespeare_slice), "--out", str(tmp_path / "c")]
    assert main([*compared, "--json", "--quiet", "--max-tokens", "320"]) == 0
    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert table["rows"][0]["tokens"] == 320
    assert table["rows"][0]["bits_per_byte"] > 0
    assert main(["compare", "no-such-experiment", "--data", str(shakespeare_slice)]) == 2
    assert main([*compared, "--max-tokens", "0"]) == 2
    assert main(["eval", "shakespeare", *args, "--max-tokens", "0"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert "unknown experiment 'no-such-experiment'" in errors[0]
    assert errors[1:] == ["error: --max-tokens: must be a positive number of tokens"] * 2


@pytest.mark.slow
def test_user_errors_become_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "shakespeare", "--set", "train.max_iters=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "train.max_iters" in err
    assert err.count("\n") == 1
    assert main(["prepare", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert main(["prepare", "x", "--config", str(tmp_path / "none.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_loop_refuses_to_run_under_torchrun(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["loop", "shakespeare"]) == 2
    assert "under torchrun run `prepare` first" in capsys.readouterr().err
