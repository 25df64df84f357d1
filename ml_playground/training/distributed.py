"""torch.distributed for training launched by ``torchrun``: process group, model wrapping, rank helpers.

A single process (no ``WORLD_SIZE`` > 1 in the environment) gets a context of world size 1 and
every helper is a no-op, so the same code path serves both.

Two strategies: ``ddp`` (every rank holds the whole model and optimizer; gradients are all-reduced)
and ``fsdp`` (FSDP2's ``fully_shard``: each transformer block and then the whole model are sharded,
so parameters, gradients and optimizer state live 1/world_size per rank; each block's weights are
all-gathered just before it runs). FSDP2 runs over gloo on the CPU as well as over NCCL on CUDA.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ml_playground.core.errors import ConfigError
from ml_playground.core.lazy_types import is_fsdp_module


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

    def max_(self, value: int) -> int:
        """The largest ``value`` over the ranks."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor[0])

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
    model: nn.Module,
    ctx: DistributedContext,
    strategy: Literal["ddp", "fsdp"],
    device: torch.device,
    param_dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, Callable[[], contextlib.AbstractContextManager[object]] | None]:
    """The module to train with, and the context that skips gradient sync on accumulation micro-steps.

    Under ``fsdp`` the model is sharded in place (the returned module is ``model`` itself, its
    parameters now ``DTensor`` shards); ``param_dtype`` other than float32 (CUDA with bfloat16 or
    float16) becomes FSDP2's mixed-precision policy: weights gathered in that type, gradients reduced
    in float32.
    """
    if not ctx.enabled:
        return model, None
    if strategy == "fsdp":
        return shard_model(model, device, param_dtype)
    ddp = DistributedDataParallel(model, device_ids=[ctx.local_rank] if device.type == "cuda" else None)
    return ddp, ddp.no_sync


def shard_model(
    model: nn.Module, device: torch.device, param_dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, Callable[[], contextlib.AbstractContextManager[object]]]:
    """``fully_shard`` each block, then the rest (embeddings, final norm, head) as the root's own group."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()  # float32: nothing cast
    if device.type == "cuda" and param_dtype != torch.float32:  # pragma: no cover (no GPU on the CI machine)
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ConfigError(
            f"fsdp shards a model block by block; {type(model).__name__} has no .blocks",
            key="train.distributed.strategy",
        )
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    sharded: FSDPModule = fully_shard(model, mp_policy=policy)

    @contextlib.contextmanager
    def no_sync() -> Iterator[None]:
        sharded.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            sharded.set_requires_gradient_sync(True)

    return model, no_sync


def is_sharded(model: nn.Module) -> bool:
    return is_fsdp_module(model)
