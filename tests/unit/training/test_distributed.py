from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn

from ml_playground.core.errors import ConfigError
from ml_playground.training.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    context_from_env,
    init_process_group,
    shutdown,
    wrap_model,
)

pytestmark = pytest.mark.unit


def test_context_from_torchrun_environment() -> None:
    assert context_from_env({}) == SINGLE_PROCESS
    assert context_from_env({"WORLD_SIZE": "1", "RANK": "0"}) == SINGLE_PROCESS
    ctx = context_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.enabled, ctx.is_main) == (3, 4, 1, True, False)


def test_single_process_helpers_are_identities() -> None:
    ctx = SINGLE_PROCESS
    assert init_process_group(ctx, torch.device("cpu"), 60) is ctx
    tensor = torch.tensor([2.0])
    assert ctx.sum_(tensor) is tensor
    assert ctx.mean(1.5) == 1.5
    assert ctx.any(True)
    assert not ctx.any(False)
    ctx.barrier()
    model = nn.Linear(2, 2)
    assert wrap_model(model, ctx, "ddp", torch.device("cpu")) == (model, None)
    shutdown(ctx)


def test_fsdp_on_the_cpu_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"train\.distributed\.strategy: fsdp .* needs CUDA"):
        wrap_model(nn.Linear(2, 2), DistributedContext(rank=0, world_size=2), "fsdp", torch.device("cpu"))


def _worker(rank: int, init_file: str, results: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1"})
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ctx = init_process_group(DistributedContext(rank=rank, world_size=2), torch.device("cpu"), 60)
    assert ctx.backend == "gloo"
    mean = ctx.mean(float(rank + 1))  # (1 + 2) / 2
    anyone = ctx.any(rank == 1)
    nobody = ctx.any(False)
    torch.manual_seed(rank)  # different starting weights: DDP must broadcast rank 0's
    model, no_sync = wrap_model(nn.Linear(3, 1), ctx, "ddp", torch.device("cpu"))
    assert no_sync is not None
    weight = next(model.parameters()).detach().clone()
    ctx.barrier()
    Path(results, f"{rank}.txt").write_text(f"{mean} {anyone} {nobody} {weight.sum().item():.6f}")
    shutdown(ctx)


def test_two_real_processes_agree(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    first, second = ((tmp_path / f"{r}.txt").read_text().split() for r in range(2))
    assert first[:3] == second[:3] == ["1.5", "True", "False"]
    assert first[3] == second[3]
