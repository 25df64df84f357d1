"""Run ``train`` in this process and SIGKILL it at a chosen point; used by the resume tests.

Usage: python train_with_kill.py OVERRIDES_JSON MODE STEP [EXPERIMENT]
MODE: ``none`` (run to the end), ``after-step`` (killed after the optimizer step STEP, before any
checkpoint of that step is written), ``mid-save`` (killed while the checkpoint of step STEP is
half written), ``kill-rank-R`` (under torchrun: only rank R is killed after step STEP).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from ml_playground.commands.train import train
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.training.checkpointing.service import write_file_durably
from ml_playground.training.context import Hook, TrainingContext


class KillAfterStep(Hook):
    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step = step
        self.rank = rank

    def on_step_end(self, ctx: TrainingContext) -> None:
        this_rank = int(os.environ.get("RANK", "0"))
        if ctx.state.step == self.step and (self.rank is None or this_rank == self.rank):
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    overrides, mode, step = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    experiment = sys.argv[4] if len(sys.argv) > 4 else "shakespeare"
    config = load_config(experiment_config_path(experiment), overrides)
    hooks: list[Hook] = []
    if mode == "after-step":
        hooks.append(KillAfterStep(step))
    elif mode.startswith("kill-rank-"):
        hooks.append(KillAfterStep(step, rank=int(mode.removeprefix("kill-rank-"))))
    writes = {"n": 0}

    def write_file(path: Path, data: bytes) -> None:
        if mode == "mid-save" and path.parent.name.startswith(f".tmp-step_{step:08d}"):
            writes["n"] += 1
            if writes["n"] == 2:
                path.write_bytes(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        write_file_durably(path, data)

    train(config, quiet=True, extra_hooks=hooks, write_file=write_file, environ=os.environ)


if __name__ == "__main__":
    main()
