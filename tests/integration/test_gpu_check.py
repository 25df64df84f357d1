from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from ml_playground.bench.gpu_check import datasheet, main
from ml_playground.cli import main as ml_playground
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def in_process(args: Sequence[str], _: Path) -> None:
    """``train`` in this process (the check runs it in a child; this saves the suite two process starts)."""
    assert ml_playground(["train", *args, "--quiet", "--fresh"]) == 0


def test_the_gpu_check_rehearses_its_whole_path_on_the_cpu(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundestag = shared_data / "bundestag" / "19001.txt"
    base = build_tiny_causal_lm(tmp_path / "base", [bundestag.read_text("utf-8")[:20000]], architecture="llama")
    inputs = ["--shakespeare", str(shared_data / "shakespeare" / "input.txt"), "--bundestag", str(bundestag)]
    work = tmp_path / "work"
    argv = ["--device", "cpu", "--quick", "--base-model", str(base), "--work-dir", str(work), *inputs]
    assert main(argv, run=in_process) == 0
    printed = capsys.readouterr().out
    assert "device: CPU" in printed
    assert "peak: bfloat16 matmul peak measured here" in printed
    saved = json.loads((work / "results.json").read_text("utf-8"))
    rows = saved["results"]
    assert saved["machine"]["device"] == "CPU"
    assert [row["unit"] for row in rows] == ["tokens/s"] * 4
    assert all(row["figure"] > 0 for row in rows)
    assert ["MFU" in row["note"] for row in rows] == [True, False, True, False]
    assert ["GB/s" in row["note"] for row in rows] == [False, True, False, True]
    assert rows[0]["name"] == "speedrun train, bfloat16"
    assert rows[2]["name"] == "LoRA train (base), bfloat16"
    assert all(row["name"] in printed for row in rows)


def test_without_cuda_it_stops_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--work-dir", str(tmp_path)], has_cuda=lambda: False) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: gpu-check needs a CUDA device")
    assert error.count("\n") == 1
    assert main(["--device", "cpu", "--shakespeare", str(tmp_path / "none.txt")]) == 2
    assert capsys.readouterr().err == f"error: --shakespeare: no such file: {tmp_path / 'none.txt'}\n"


def test_datasheet_peaks_match_the_longest_name_first() -> None:
    assert datasheet("NVIDIA H100 PCIe") == (756e12, 2.0e12)
    assert datasheet("NVIDIA H100 80GB HBM3") == (989e12, 3.35e12)
    assert datasheet("NVIDIA H200") == (989e12, 4.8e12)
    assert datasheet("Some other GPU") is None
