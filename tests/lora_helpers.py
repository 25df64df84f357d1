"""Helpers for the LoRA tests: where a run reads and writes, and a killed run that resumes bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

HELPER = Path(__file__).parent / "integration" / "train_with_kill.py"


def run_paths(root: Path, base: Path, data: Path, run: str = "run") -> list[str]:
    """``--set`` overrides for a tiny run under ``root``: its base model, its input, its dataset and run folders."""
    return [
        f"train.model.base_model='{base}'",
        f"prepare.input_path='{data}'",
        f"prepare.dataset_dir='{root / 'dataset'}'",
        f"train.out_dir='{root / run}'",
    ]


def assert_killed_run_resumes_to(straight_run: Path, killed_run: Path, overrides: list[str], experiment: str) -> None:
    """Train ``experiment`` with ``overrides`` (whose out_dir is ``killed_run``), SIGKILL it after step 4,
    resume it, and compare its last adapters with ``straight_run``'s."""
    helper = [sys.executable, str(HELPER), json.dumps(overrides), "after-step", "4", experiment]
    killed = subprocess.run(helper, capture_output=True, text=True, timeout=300, check=False)
    assert killed.returncode == -9, killed.stderr
    resumed = subprocess.run(
        [*helper[:3], "none", "0", experiment], capture_output=True, text=True, timeout=300, check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout + resumed.stderr
    again = load_file(str(killed_run / "adapters" / "last" / "adapter_model.safetensors"))
    straight = load_file(str(straight_run / "adapters" / "last" / "adapter_model.safetensors"))
    assert again.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(again[name], straight[name], rtol=0, atol=0)
