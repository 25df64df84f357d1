"""torchrun over gloo on the CPU: FSDP2 and DDP against one process, resume across strategies, world
sizes and a two-node launch, a killed rank."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ml_playground.commands.train import train
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import PrepareConfig
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.sampling.runner import load_model
from ml_playground.training.checkpointing.service import CheckpointService, LoadedCheckpoint
from tests.conftest import REPO_ROOT, tiny_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HELPER = Path(__file__).with_name("train_with_kill.py")
STEPS = 20
COMMON = [
    "train.num_threads=1",
    "train.eval_interval=5",
    "train.log_interval=1",
    "train.checkpoint.interval=5",
    f"train.schedule.decay_iters={STEPS}",  # the same learning rates whatever max_iters a leg stops at
]
FSDP = "train.distributed.strategy='fsdp'"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def launch(launcher: list[str], overrides: list[str], mode: str, step: int) -> list[str]:
    run = [sys.executable, "-m", "torch.distributed.run", *launcher, "--monitor-interval", "1"]
    return [*run, str(HELPER), json.dumps(overrides), mode, str(step)]


def torchrun(
    nproc: int, overrides: list[str], *, mode: str = "none", step: int = 0
) -> subprocess.CompletedProcess[str]:
    command = launch(["--standalone", "--nproc-per-node", str(nproc)], overrides, mode, step)
    return subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO_ROOT, env=ENV, check=False)


def two_nodes(overrides: list[str]) -> list[int]:
    """Two torchrun agents, one process each, meeting at a c10d rendezvous on 127.0.0.1: two "nodes"."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    agents = []
    for node in (0, 1):
        launcher = ["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
        launcher += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes"]
        agents.append(
            subprocess.Popen(
                launch(launcher, overrides, "none", 0),
                cwd=REPO_ROOT,
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    codes = []
    for agent in agents:
        _, stderr = agent.communicate(timeout=180)
        assert agent.returncode == 0, stderr[-4000:]
        codes.append(agent.returncode)
    return codes


def in_process(overrides: list[str]) -> None:
    """One process, in this one: what a plain ``ml_playground train`` does."""
    train(load_config(experiment_config_path("shakespeare"), overrides), quiet=True, install_signal_handlers=False)


def losses(out_dir: Path) -> list[tuple[int, str, float]]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], key, r[key]) for r in records for key in ("train_loss", "val_loss") if key in r]


def assert_same_losses(a: Path, b: Path, *, abs_tol: float) -> None:
    first, second = losses(a), losses(b)
    assert [(s, k) for s, k, _ in first] == [(s, k) for s, k, _ in second]
    if abs_tol == 0:
        assert [v for *_, v in first] == [v for *_, v in second]
    else:
        assert [v for *_, v in first] == pytest.approx([v for *_, v in second], abs=abs_tol)


def last(out_dir: Path) -> LoadedCheckpoint:
    service = CheckpointService(out_dir)
    return service.load(service.resolve("last"))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    corpus = root / "corpus.txt"
    corpus.write_text((shared_data / "shakespeare" / "input.txt").read_text("utf-8")[:30_000])
    prepare(PrepareConfig(input_path=str(corpus), dataset_dir=root / "dataset"))
    return root


def overrides_for(root: Path, name: str, *extra: str) -> list[str]:
    return [*tiny_overrides(root, root / "corpus.txt"), *COMMON, f"train.out_dir='{root / name}'", *extra]


def reference_run(root: Path, name: str, *extra: str) -> Path:
    result = torchrun(2, overrides_for(root, name, FSDP, "train.data.batch_size=4", f"train.max_iters={STEPS}", *extra))
    assert result.returncode == 0, result.stderr[-4000:]
    return root / name


def test_fsdp_agrees_with_ddp_and_one_process_and_a_killed_rank_resumes_bit_identically(root: Path) -> None:
    """One test, so that the uninterrupted FSDP run is made once (xdist would give each worker its own)."""
    fsdp_run = reference_run(root, "fsdp")
    ddp = torchrun(2, overrides_for(root, "ddp", "train.data.batch_size=4", f"train.max_iters={STEPS}"))
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    in_process(overrides_for(root, "one", "train.data.batch_size=8", f"train.max_iters={STEPS}"))
    assert len(losses(fsdp_run)) == STEPS + STEPS // 5 + 1  # every step, and an evaluation every 5 from step 0
    assert_same_losses(fsdp_run, root / "ddp", abs_tol=1e-5)
    assert_same_losses(fsdp_run, root / "one", abs_tol=1e-5)
    sharded, replicated, single = last(fsdp_run), last(root / "ddp"), last(root / "one")
    assert sharded.step == replicated.step == single.step == STEPS
    assert sorted(sharded.model) == sorted(single.model)  # whole weights, the tied head included, as one process
    for name, weight in single.model.items():
        assert sharded.model[name].shape == weight.shape
        assert torch.allclose(sharded.model[name], replicated.model[name], atol=1e-6), name
        # summed in another order; AdamW's division by the root of the squared gradients turns rounding in
        # a gradient near zero into up to a few 1e-5 after 20 steps of lr 2e-3
        assert torch.allclose(sharded.model[name], weight, atol=5e-5), name
    moments = sharded.training_state, single.training_state
    assert moments[0] is not None
    assert moments[1] is not None
    first, second = moments[0]["optimizer"], moments[1]["optimizer"]
    assert first["param_groups"] == second["param_groups"]  # numbered as Optimizer.state_dict numbers them
    for index, state in second["state"].items():
        assert torch.allclose(first["state"][index]["exp_avg"], state["exp_avg"], atol=1e-5)

    # SIGKILL of one rank mid-run: the job ends, the last checkpoint loads in one process and resumes exactly
    killed = root / "killed"
    overrides = overrides_for(root, "killed", FSDP, "train.data.batch_size=4", f"train.max_iters={STEPS}")
    started = time.monotonic()
    result = torchrun(2, overrides, mode="kill-rank-1", step=12)
    assert result.returncode != 0
    assert time.monotonic() - started < 120
    assert "rank" in result.stderr  # torchrun names the failed rank
    assert ": 1" in result.stderr
    assert last(killed).step == 10
    single_dir = root / "killed-single"
    shutil.copytree(killed, single_dir)
    config = load_config(experiment_config_path("shakespeare"), overrides_for(root, "killed-single"))
    assert load_model(config).step == 10  # one process reads what two sharded ranks wrote
    resumed = torchrun(2, overrides)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert_same_losses(killed, fsdp_run, abs_tol=0)  # the same world size: the same numbers
    for name, weight in last(fsdp_run).model.items():
        assert torch.equal(last(killed).model[name], weight), name


def test_resume_fsdp_then_one_process_then_two_ddp_nodes_then_fsdp(root: Path) -> None:
    in_process(overrides_for(root, "uninterrupted", "train.data.batch_size=8", f"train.max_iters={STEPS}"))
    chain = overrides_for(root, "chain")
    # sampling during training runs on every sharded rank (each forward pass is a collective)
    sampling = ["train.sample_during_training.every_evals=1", "train.sample_during_training.max_new_tokens=8"]
    first = torchrun(2, [*chain, FSDP, *sampling, "train.data.batch_size=4", "train.max_iters=5"])
    assert first.returncode == 0, first.stderr[-4000:]
    in_process([*chain, "train.data.batch_size=8", "train.max_iters=10"])
    assert two_nodes([*chain, "train.data.batch_size=4", "train.max_iters=15"]) == [0, 0]
    again = torchrun(2, [*chain, FSDP, *sampling, "train.data.batch_size=4", f"train.max_iters={STEPS}"])
    assert again.returncode == 0, again.stderr[-4000:]
    assert last(root / "chain").step == STEPS
    events = EventAccumulator(str(root / "chain" / "tb"))
    events.Reload()
    assert "sample/text_summary" in events.Tags()["tensors"]  # rank 0 logged what all ranks generated
    # each leg resumed the optimizer state of the last: the losses follow an uninterrupted run's (the same
    # global batch of 8 in one process, which the test above shows FSDP matches within 1e-5)
    assert_same_losses(root / "chain", root / "uninterrupted", abs_tol=1e-5)
