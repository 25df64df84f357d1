"""lm-evaluation-harness (the real ``lm-eval``) against our server and against our Hugging Face export.

A tiny real Qwen2 fine-tuned with LoRA for a few steps; the held-out text is longer than the model's
context, so the server scores it in several windows. ``ml_playground harness`` runs both tasks: the
rolling bits per byte through ``serve`` must equal ``eval --data``'s, and the next-sentence accuracy
through ``serve`` the harness's ``hf`` model's on the export.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from ml_playground.cli import main
from ml_playground.commands.train import train
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import ExperimentConfig
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm
from tests.lora_helpers import run_paths

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPERIMENT = "bundestag_qwen15b_lora_mps"
HELD_OUT_LINES = 400  # about 25,000 characters: several windows of the tiny model's 1,024-token context


def settings(root: Path, base: Path, data: Path) -> list[str]:
    return [
        *run_paths(root, base, data),
        "train.device='cpu'",
        "train.num_threads=1",
        "train.model.block_size=64",
        "train.data.batch_size=4",
        "train.max_iters=8",
        "train.eval_interval=8",
        "train.eval_iters=1",
        "train.log_interval=8",
        "train.checkpoint.interval=8",
        "train.schedule.warmup_iters=2",
        "train.optim.learning_rate=5e-3",
        "train.model.lora.r=4",
    ]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[list[str], Path]:
    root = tmp_path_factory.mktemp("harness")
    train_text = shared_data / "bundestag" / "19009.txt"
    base = build_tiny_causal_lm(root / "qwen2", [train_text.read_text("utf-8-sig")])
    overrides = settings(root, base, train_text)
    config: ExperimentConfig = load_config(experiment_config_path(EXPERIMENT), overrides)
    prepare(config.prepare)
    train(config, quiet=True, console=Console(file=io.StringIO()))
    lines = (shared_data / "bundestag" / "19003.txt").read_text("utf-8-sig").splitlines()[:HELD_OUT_LINES]
    held_out = root / "held_out.txt"
    held_out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return overrides, held_out


def test_the_harness_through_serve_matches_eval_and_the_hf_model(
    tuned: tuple[list[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides, held_out = tuned
    sets = [arg for override in overrides for arg in ("--set", override)]
    out = tmp_path / "harness"
    command = ["harness", EXPERIMENT, *sets, "--data", str(held_out), "--items", "16", "--out", str(out), "--json"]
    assert main(command) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["tokens"] > 2 * report["context_length"] == 2 * 1024  # the server scored several windows
    assert report["relative_difference"] < 1e-4, report
    assert report["items"] == 16
    assert report["served_accuracy"] == report["hf_accuracy"], report
    assert 0.0 <= report["served_accuracy"] <= 1.0
    for task in ("protocol_bpb", "protocol_next"):
        assert (out / "tasks" / f"{task}.yaml").is_file()
    assert (out / "hf" / "config.json").is_file()
