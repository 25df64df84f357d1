"""Exact resume: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from ml_playground.commands.train import train
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.errors import CheckpointError
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.training.checkpointing.service import CheckpointService
from tests.conftest import tiny_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HELPER = Path(__file__).with_name("train_with_kill.py")
RESUME_SETTINGS = [
    "train.model.dropout=0.1",  # dropout draws from the global RNG: resume must restore it
    "train.model.ema.enabled=true",
    "train.model.ema.decay=0.9",
    "train.num_threads=1",
    "train.max_iters=30",
    "train.checkpoint.interval=10",
    "train.checkpoint.keep_last=5",
    "train.eval_interval=10",
]


def run_helper(overrides: list[str], mode: str, step: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HELPER), json.dumps(overrides), mode, str(step)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def final_state(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[dict[str, float]]]:
    service = CheckpointService(out_dir)
    loaded = service.load(service.resolve("last"))
    assert loaded.step == 30
    assert loaded.ema is not None
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [{k: v for k, v in r.items() if "loss" in k or k == "step"} for r in records]
    return loaded.model, loaded.ema, losses


@pytest.fixture(scope="module")
def dataset_and_baseline(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    corpus = root / "corpus.txt"
    corpus.write_text((shared_data / "shakespeare" / "input.txt").read_text("utf-8")[:30_000])
    overrides = [*tiny_overrides(root, corpus), *RESUME_SETTINGS, f"train.out_dir='{root / 'baseline'}'"]
    prepare(PrepareConfig(input_path=str(corpus), dataset_dir=root / "dataset"))
    result = run_helper(overrides, "none")
    assert result.returncode == 0, result.stderr
    return root, root / "baseline"


@pytest.mark.parametrize(
    ("mode", "step"),
    [
        ("after-step", 20),  # between the optimizer step and the checkpoint write of step 20
        ("after-step", 17),  # an arbitrary step between checkpoints
        ("mid-save", 20),  # while the checkpoint of step 20 is half written
    ],
)
def test_killed_and_resumed_run_is_bit_identical(dataset_and_baseline: tuple[Path, Path], mode: str, step: int) -> None:
    root, baseline = dataset_and_baseline
    out_dir = root / f"killed-{mode}-{step}"
    overrides = [*tiny_overrides(root, root / "corpus.txt"), *RESUME_SETTINGS, f"train.out_dir='{out_dir}'"]
    killed = run_helper(overrides, mode, step)
    assert killed.returncode == -9, killed.stderr
    service = CheckpointService(out_dir)
    last = service.pointer_info("last")
    assert last is not None
    assert last["step"] == 10  # the newest checkpoint completed before the kill
    assert service.load(service.resolve("last")).step == 10
    assert bool(list((out_dir / "checkpoints").glob(".tmp-*"))) == (mode == "mid-save")
    resumed = run_helper(overrides, "none")
    assert resumed.returncode == 0, resumed.stderr
    model, ema, losses = final_state(out_dir)
    base_model, base_ema, base_losses = final_state(baseline)
    assert model.keys() == base_model.keys()
    for name in model:
        assert torch.equal(model[name], base_model[name]), name
    for name in ema:
        assert torch.equal(ema[name], base_ema[name]), name
    assert losses == base_losses
    assert not list((out_dir / "checkpoints").glob(".tmp-*"))


def test_muon_run_resumes_bit_identically_and_refuses_another_optimizer(
    dataset_and_baseline: tuple[Path, Path],
) -> None:
    root, _ = dataset_and_baseline
    common = [*tiny_overrides(root, root / "corpus.txt"), *RESUME_SETTINGS, "train.optim.name=muon"]
    straight = run_helper([*common, f"train.out_dir='{root / 'muon-straight'}'"], "none")
    assert straight.returncode == 0, straight.stderr
    out_dir = root / "muon-killed"
    killed = run_helper([*common, f"train.out_dir='{out_dir}'"], "after-step", 17)
    assert killed.returncode == -9, killed.stderr
    with pytest.raises(CheckpointError, match=r"optimizer state does not fit train\.optim\.name = 'adamw'"):
        train(
            load_config(
                experiment_config_path("shakespeare"), [*common, "train.optim.name=adamw", f"train.out_dir='{out_dir}'"]
            ),
            console=Console(file=io.StringIO()),
            install_signal_handlers=False,
        )
    resumed = run_helper([*common, f"train.out_dir='{out_dir}'"], "none")
    assert resumed.returncode == 0, resumed.stderr
    model, _, losses = final_state(out_dir)
    base_model, _, base_losses = final_state(root / "muon-straight")
    for name in model:
        assert torch.equal(model[name], base_model[name]), name
    assert losses == base_losses


def test_a_run_on_record_aware_windows_resumes_bit_identically(tmp_path: Path, xml_archive: Path) -> None:
    """Header-conditioned speeches from two real XML sessions: the record-aware sampler resumes exactly."""
    from ml_playground.configuration.models import FiltersConfig

    dataset = tmp_path / "speeches"
    prepare(
        PrepareConfig(
            input_path=str(xml_archive),
            dataset_dir=dataset,
            format="bundestag_xml",
            conditioning="header",
            tokenizer="bpe",
            bpe_vocab_size=400,
            speaker_dropout=0.5,
            filters=FiltersConfig(drop_chair=True, min_length=200),
        )
    )
    common = [
        *tiny_overrides(tmp_path, xml_archive),
        *RESUME_SETTINGS,
        f"prepare.dataset_dir='{dataset}'",
        "train.model.block_size=96",
    ]
    straight = run_helper([*common, f"train.out_dir='{tmp_path / 'straight'}'"], "none")
    assert straight.returncode == 0, straight.stderr
    killed = run_helper([*common, f"train.out_dir='{tmp_path / 'killed'}'"], "after-step", 17)
    assert killed.returncode == -9, killed.stderr
    resumed = run_helper([*common, f"train.out_dir='{tmp_path / 'killed'}'"], "none")
    assert resumed.returncode == 0, resumed.stderr
    model, ema, losses = final_state(tmp_path / "killed")
    base_model, base_ema, base_losses = final_state(tmp_path / "straight")
    for name in model:
        assert torch.equal(model[name], base_model[name]), name
    for name in ema:
        assert torch.equal(ema[name], base_ema[name]), name
    assert losses == base_losses
    assert losses[0]["step"] == 0  # the reference evaluation before the first step


def test_a_float16_run_resumes_with_its_loss_scale(tmp_path: Path, shakespeare_slice: Path) -> None:
    """CPU autocast float16 with a GradScaler: stopped at step 10 and resumed, it ends where a straight run ends.

    The scaler's state (scale, steps since it last grew) is one of the checkpoint's parts: without it the
    resumed run would count its growth interval from zero again."""
    import io

    from rich.console import Console

    from ml_playground.commands.train import train
    from ml_playground.configuration.loading import experiment_config_path, load_config

    def run(name: str, max_iters: int) -> Path:
        overrides = [*tiny_overrides(tmp_path, shakespeare_slice), f"train.out_dir='{tmp_path / name}'"]
        settings = ["train.dtype='float16'", "train.schedule.decay_iters=20", f"train.max_iters={max_iters}"]
        config = load_config(experiment_config_path("shakespeare"), [*overrides, *settings, "train.model.dropout=0.1"])
        if not config.prepare.dataset_dir.exists():
            prepare(config.prepare)
        train(config, console=Console(file=io.StringIO()))
        return tmp_path / name

    straight = CheckpointService(run("straight", 20)).load(CheckpointService(tmp_path / "straight").resolve("last"))
    run("resumed", 10)
    halfway = CheckpointService(tmp_path / "resumed").load(CheckpointService(tmp_path / "resumed").resolve("last"))
    assert halfway.training_state is not None
    assert halfway.training_state["scaler"]["_growth_tracker"] == 10  # ten steps without an overflow
    run("resumed", 20)
    resumed = CheckpointService(tmp_path / "resumed").load(CheckpointService(tmp_path / "resumed").resolve("last"))
    assert resumed.training_state is not None
    assert straight.training_state is not None
    assert resumed.training_state["scaler"] == straight.training_state["scaler"]
    assert resumed.training_state["scaler"]["_growth_tracker"] == 20
    for name, tensor in straight.model.items():
        assert torch.equal(resumed.model[name], tensor), name
