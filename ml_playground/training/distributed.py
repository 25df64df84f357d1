"""torch.distributed for training launched by ``torchrun``: process group, model wrapping, rank helpers.

A single process (no ``WORLD_SIZE`` > 1 in the environment) gets a context of world size 1 and
every helper is a no-op, so the same code path serves both.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ml_playground.core.errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) in place across ranks; identity for one process."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        return float(self.sum_(tensor)[0]) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on at least one."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0])
        return bool(self.sum_(tensor)[0] > 0)


SINGLE_PROCESS = DistributedContext()


def context_from_env(environ: Mapping[str, str]) -> DistributedContext:
    """What torchrun says about this process (RANK, WORLD_SIZE, LOCAL_RANK), not yet connected."""
    world_size = int(environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    return DistributedContext(
        rank=int(environ["RANK"]), world_size=world_size, local_rank=int(environ.get("LOCAL_RANK", "0"))
    )


def init_process_group(ctx: DistributedContext, device: torch.device, timeout_s: int) -> DistributedContext:
    """Join the process group torchrun set up: NCCL on CUDA, gloo on the CPU."""
    if not ctx.enabled:
        return ctx
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":  # pragma: no cover (no GPU on the CI machine)
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(ctx.rank, ctx.world_size, ctx.local_rank, backend)


def shutdown(ctx: DistributedContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(
    model: nn.Module, ctx: DistributedContext, strategy: Literal["ddp", "fsdp"], device: torch.device
) -> tuple[nn.Module, Callable[[], contextlib.AbstractContextManager[object]] | None]:
    """The module to train with, and the context that skips gradient sync on accumulation micro-steps."""
    if not ctx.enabled:
        return model, None
    if strategy == "fsdp":
        if device.type != "cuda":
            raise ConfigError(
                "fsdp (FSDP2) shards over NCCL and needs CUDA here; "
                "use train.distributed.strategy = 'ddp' on this device",
                key="train.distributed.strategy",
            )
        return _fully_shard(model), None  # pragma: no cover (no GPU on the CI machine)
    ddp = DistributedDataParallel(model, device_ids=[ctx.local_rank] if device.type == "cuda" else None)
    return ddp, ddp.no_sync


def _fully_shard(model: nn.Module) -> nn.Module:  # pragma: no cover (needs CUDA)
    from torch.distributed.fsdp import fully_shard

    for block in getattr(model, "blocks", []):
        fully_shard(block)
    fully_shard(model)
    return model
