from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn

from ml_playground.core.errors import ConfigError
from ml_playground.families.gpt.model import GPT, GPTConfig
from ml_playground.training.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    context_from_env,
    init_process_group,
    is_sharded,
    shutdown,
    wrap_model,
)
from ml_playground.training.ema import EMA
from ml_playground.training.sharded_state import (
    full_model_state,
    full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
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


def test_fsdp_needs_a_model_of_blocks() -> None:
    with pytest.raises(ConfigError, match=r"train\.distributed\.strategy: fsdp shards a model block by block"):
        wrap_model(nn.Linear(2, 2), DistributedContext(rank=0, world_size=2), "fsdp", torch.device("cpu"))


def _sharded_worker(rank: int, init_file: str, results: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ctx = init_process_group(DistributedContext(rank=rank, world_size=2), torch.device("cpu"), 60)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))
    whole = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    sharded, no_sync = wrap_model(model, ctx, "fsdp", torch.device("cpu"))
    assert sharded is model
    assert is_sharded(model)
    assert no_sync is not None
    local = sum(p.to_local().numel() for p in model.parameters())  # type: ignore[attr-defined]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = EMA(model, decay=0.5)
    x = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(rank))
    with no_sync():  # an accumulation micro-step: gradients stay local
        model(x).sum().backward()
    model(x).sum().backward()
    optimizer.step()
    ema.update(step=1)
    averaged = ema.state_dict()  # whole on every rank: halfway between the start and the stepped weights
    stepped = full_model_state(model)
    if rank == 0:
        assert torch.allclose(averaged["wte.weight"], (whole["wte.weight"] + stepped["wte.weight"]) / 2)
    ema.load_state_dict({name: torch.zeros_like(t) for name, t in averaged.items()})
    assert all(float(t.full_tensor().abs().sum()) == 0 for t in ema.shadow)  # type: ignore[attr-defined]
    state = full_model_state(model)
    moments = full_optimizer_state(model, optimizer)
    if rank == 0:
        assert sorted(state) == sorted(whole)
        assert state["lm_head.weight"] is state["wte.weight"]
        assert [tuple(state[n].shape) for n in whole] == [tuple(t.shape) for t in whole.values()]
        assert sorted(moments["state"]) == list(range(len(list(model.parameters()))))
        torch.save({"model": state, "optimizer": moments}, Path(results, "whole.pt"))
    else:
        assert state == {}  # gathered to rank 0 only
        assert moments == {}
    ctx.barrier()
    saved = torch.load(Path(results, "whole.pt"), weights_only=True)
    torch.manual_seed(1)
    fresh = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))
    wrap_model(fresh, ctx, "fsdp", torch.device("cpu"))
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    load_full_model_state(fresh, saved["model"])
    load_full_optimizer_state(fresh, fresh_optimizer, saved["optimizer"])
    again = full_model_state(fresh), full_optimizer_state(fresh, fresh_optimizer)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_full_optimizer_state(fresh, fresh_optimizer, {"state": {99: {}}, "param_groups": []})
    if rank == 0:
        assert all(torch.equal(again[0][n], saved["model"][n]) for n in saved["model"])
        assert all(
            torch.equal(again[1]["state"][i]["exp_avg_sq"], saved["optimizer"]["state"][i]["exp_avg_sq"])
            for i in saved["optimizer"]["state"]
        )
    total = sum(t.numel() for n, t in whole.items() if n != "lm_head.weight")
    Path(results, f"{rank}.txt").write_text(f"{local} {total}")
    ctx.barrier()  # both ranks done before either tears the group down (as training does)
    shutdown(ctx)


def test_fsdp_shards_two_real_processes_and_gathers_whole_state(tmp_path: Path) -> None:
    mp.spawn(_sharded_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    (local_0, total), (local_1, _) = ((int(v) for v in (tmp_path / f"{r}.txt").read_text().split()) for r in range(2))
    assert local_0 + local_1 == total  # each weight lives once, split over the two ranks
    assert abs(local_0 - local_1) <= total // 4


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
