from __future__ import annotations

import functools
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from ml_playground.commands.train import move_aside
from ml_playground.families.gpt.family import maybe_compile
from ml_playground.families.gpt.model import GPT, GPTConfig

pytestmark = pytest.mark.unit


def test_compile_falls_back_to_eager_with_one_warning() -> None:
    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False)
    broken_backend = functools.partial(torch.compile, backend="no_such_backend")
    assert maybe_compile(model, True, console, compiler=broken_backend) is None
    assert buffer.getvalue().startswith("warning: torch.compile is not available here (")
    assert buffer.getvalue().count("\n") == 1
    assert maybe_compile(model, False, console) is None


def test_move_aside_only_moves_a_non_empty_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert move_aside(run) is None
    run.mkdir()
    assert move_aside(run) is None
    (run / "metrics.jsonl").write_text("{}")
    moved = move_aside(run)
    assert moved is not None
    assert (moved / "metrics.jsonl").read_text() == "{}"
    assert not run.exists()


PROBE = """
import json, sys, torch
from ml_playground.commands.train import use_deterministic_algorithms
use_deterministic_algorithms({mode}, compiling={compiling})
loaded = "torch._inductor.config" in sys.modules
import torch._inductor.config as inductor
import torch.utils.deterministic as fill
flags = [torch.are_deterministic_algorithms_enabled(), loaded, inductor.deterministic]
print(json.dumps([*flags, fill.fill_uninitialized_memory]))
"""


@pytest.mark.parametrize(("mode", "compiling"), [(True, False), (True, True)])
def test_deterministic_mode_reaches_inductor_only_when_compiling(mode: bool, compiling: bool) -> None:
    """Eager runs set the flag the kernels read without importing inductor; compiled runs set inductor's too.
    Neither fills new tensors with NaN: a write of every activation before its kernel writes it."""
    probe = PROBE.format(mode=mode, compiling=compiling)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [mode, compiling, mode and compiling, False]
