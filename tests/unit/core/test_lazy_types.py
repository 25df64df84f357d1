from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ml_playground.core.lazy_types import is_dtensor, is_fsdp_module, is_instance_if_loaded

pytestmark = pytest.mark.unit


def test_classes_of_modules_not_imported_match_nothing_and_are_not_imported() -> None:
    assert not is_instance_if_loaded(1, "no.such.module", "Anything")
    assert "no.such.module" not in sys.modules
    assert is_instance_if_loaded(torch.zeros(1), "torch", "Tensor")
    assert not is_dtensor(torch.zeros(1))
    assert not is_fsdp_module(torch.nn.Linear(1, 1))


def test_a_command_that_does_not_shard_does_not_import_fsdp() -> None:
    code = (
        "import sys, ml_playground.commands.train, ml_playground.families.gpt.family, ml_playground.cli;"
        "print('torch.distributed.fsdp' in sys.modules, 'torch.distributed.tensor' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]  # about 1.8 s of start-up saved
