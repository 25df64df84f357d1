from __future__ import annotations

import pytest
import torch

from ml_playground.core.devices import resolve_device, resolve_precision
from ml_playground.core.errors import ConfigError

pytestmark = pytest.mark.unit


def test_auto_picks_an_available_device() -> None:
    device = resolve_device("auto")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert device.type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_unavailable_accelerators_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"train.device: CUDA was requested but is not available"):
        resolve_device("cuda")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks the refusal on a machine without MPS")
def test_unavailable_mps_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"train.device: MPS was requested"):
        resolve_device("mps")


def test_precision_and_autocast_on_cpu() -> None:
    fp16 = resolve_precision("cpu", "float16")  # CPU autocast runs float16 since PyTorch 2.4; it needs a scaler
    assert fp16.needs_grad_scaler
    with fp16.autocast():
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.float16
    bf16 = resolve_precision("cpu", "bfloat16")
    assert not bf16.needs_grad_scaler
    a = torch.randn(4, 4)
    with bf16.autocast():
        assert (a @ a).dtype == torch.bfloat16
    fp32 = resolve_precision("cpu", "float32")
    with fp32.autocast():
        assert (a @ a).dtype == torch.float32
