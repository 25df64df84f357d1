"""Per-rank memory of FSDP against DDP: a few real training steps under torchrun, measured on each rank.

Run as ``python -m torch.distributed.run --nproc-per-node 2 -m ml_playground.bench.sharding STRATEGY
OUT_DIR N_LAYER N_EMBD``; each rank writes ``rank<R>.json`` with the bytes of the parameters,
gradients and optimizer state it holds (a DTensor counts its local shard) and its peak RSS.
``sharded_memory`` launches both strategies and turns them into a bench row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ml_playground.bench.harness import BenchResult

VOCAB, BLOCK, BATCH, STEPS = 4096, 128, 4, 3


def _local_bytes(tensor: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0  # pragma: no cover (not Linux)


def worker(strategy: str, out_dir: Path, n_layer: int, n_embd: int) -> None:
    from ml_playground.configuration.models import OptimConfig
    from ml_playground.core.losses import cross_entropy
    from ml_playground.families.gpt.model import GPT, GPTConfig
    from ml_playground.training.distributed import context_from_env, init_process_group, shutdown, wrap_model
    from ml_playground.training.optim import build_optimizer

    cpu = torch.device("cpu")
    ctx = init_process_group(context_from_env(os.environ), cpu, 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=n_layer, n_head=8, n_embd=n_embd))
    module, _ = wrap_model(model, ctx, "fsdp" if strategy == "fsdp" else "ddp", cpu)
    optimizer = build_optimizer(model, OptimConfig(), cpu)
    generator = torch.Generator().manual_seed(ctx.rank)
    grads = 0
    for _ in range(STEPS):
        x = torch.randint(0, VOCAB, (BATCH, BLOCK), generator=generator)
        cross_entropy(module(x), x).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        grads = sum(_local_bytes(p.grad) for p in model.parameters() if p.grad is not None)
        optimizer.zero_grad(set_to_none=True)
    figures = {
        "parameters": sum(_local_bytes(p) for p in model.parameters()),
        "gradients": grads,
        "optimizer": sum(
            _local_bytes(v) for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)
        ),
        "peak_rss": _peak_rss(),
    }
    (out_dir / f"rank{ctx.rank}.json").write_text(json.dumps(figures))
    ctx.barrier()  # both ranks done before either tears the group down
    shutdown(ctx)


def measure(strategy: str, n_layer: int, n_embd: int, work_dir: Path) -> list[dict[str, int]]:
    out = Path(tempfile.mkdtemp(prefix=f"{strategy}-", dir=work_dir))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "ml_playground.bench.sharding", strategy, str(out), str(n_layer), str(n_embd)]
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    if done.returncode != 0:
        raise RuntimeError(f"{strategy} memory run failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


def sharded_memory(work_dir: Path, quick: bool = False) -> BenchResult:
    """Parameters + gradients + optimizer state per rank, FSDP against DDP, 2 ranks over gloo."""
    n_layer, n_embd = (2, 64) if quick else (8, 512)
    ranks = {strategy: measure(strategy, n_layer, n_embd, work_dir) for strategy in ("fsdp", "ddp")}

    def held(figures: dict[str, int]) -> float:
        return (figures["parameters"] + figures["gradients"] + figures["optimizer"]) / 2**20

    fsdp, ddp = max(held(r) for r in ranks["fsdp"]), max(held(r) for r in ranks["ddp"])
    rss = {s: max(r["peak_rss"] for r in ranks[s]) / 2**20 for s in ranks}
    return BenchResult(
        f"FSDP per-rank state, {n_layer}x{n_embd}, 2 ranks",
        fsdp,
        "MiB",
        peer="DDP: parameters + gradients + AdamW state on the larger rank",
        peer_figure=ddp,
        target=1.8,
        higher_is_better=False,
        note=f"peak RSS per rank {rss['fsdp']:,.0f} MiB (FSDP) vs {rss['ddp']:,.0f} MiB (DDP), torch runtime included",
    )


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
