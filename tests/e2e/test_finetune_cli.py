"""`loop bundestag_qwen15b_lora_mps` end to end through the CLI on a tiny Qwen2 built by the tools script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.test_cli import assert_one_line_user_error, cli, in_process, sets

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_loop_sample_eval_with_a_tiny_local_base_model(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    protocol = shared_data / "bundestag" / "19009.txt"
    built = subprocess.run(
        [sys.executable, "tools/make_tiny_hf_model.py", str(tmp_path / "tiny"), str(protocol)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    args = sets(
        [
            f"train.model.base_model='{tmp_path / 'tiny'}'",
            f"prepare.input_path='{protocol}'",
            f"prepare.dataset_dir='{tmp_path / 'dataset'}'",
            f"train.out_dir='{tmp_path / 'run'}'",
            "train.model.block_size=64",
            "train.data.grad_accum_steps=1",
            "train.max_iters=20",
            "train.eval_interval=10",
            "train.checkpoint.interval=10",
            "sample.max_new_tokens=10",
        ]
    )
    loop = cli("loop", "bundestag_qwen15b_lora_mps", *args)
    assert "memory estimate: weights" in loop.stdout
    assert "% LoRA, r=16)" in loop.stdout
    assert loop.stdout.count("Dr. Angela Merkel, Bundeskanzlerin:") >= 1
    assert (tmp_path / "run" / "adapters" / "best" / "adapter_config.json").is_file()
    evaluated = in_process(capsys, "eval", "bundestag_qwen15b_lora_mps", *args, "--json")
    report = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert report["step"] == 20
    missing = in_process(
        capsys,
        "train",
        "bundestag_qwen15b_lora_mps",
        *args,
        "--set",
        "train.model.base_model='nobody/nothing'",
        check_code=None,
    )
    assert_one_line_user_error(missing, "cannot load base model 'nobody/nothing'", "train.model.base_model")
