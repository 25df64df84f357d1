"""Device and precision choices, resolved once from config."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from ml_playground.core.errors import ConfigError
from ml_playground.core.precision_choice import cpu_autocast_dtype

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Precision:
    device: torch.device
    dtype: torch.dtype

    def autocast(self) -> AbstractContextManager[object]:
        """Mixed precision for the forward pass where it applies; float32 runs plain."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def weight_dtype(self) -> torch.dtype:
        """What frozen pretrained weights load in: the run's half dtype on an accelerator (memory); float32 on
        a CPU, where autocast runs the products in bfloat16 when chosen at a speed that loading them in
        bfloat16 does not change, while merged and exported weights keep every bit of the base."""
        return torch.float32 if self.device.type == "cpu" else self.dtype

    @property
    def needs_grad_scaler(self) -> bool:
        return self.dtype == torch.float16


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but is not available on this machine", key="train.device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("MPS was requested but is not available on this machine", key="train.device")
    return torch.device(name)


def auto_dtype(device: torch.device, cpu_choice: Callable[[], torch.dtype] = cpu_autocast_dtype) -> torch.dtype:
    """bfloat16 where the accelerator runs it natively (CUDA with bf16 support, MPS); on a CPU, bfloat16
    autocast where this CPU was measured to train clearly faster in it (``cpu_autocast_dtype``), else float32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():  # pragma: no cover (no GPU on the CI machine)
        return torch.bfloat16
    if device.type == "mps":  # pragma: no cover
        return torch.bfloat16
    if device.type == "cpu":
        return cpu_choice()
    return torch.float32  # pragma: no cover (a CUDA device without bfloat16)


def resolve_precision(
    device_name: str, dtype_name: str, cpu_choice: Callable[[], torch.dtype] = cpu_autocast_dtype
) -> Precision:
    device = resolve_device(device_name)
    dtype = auto_dtype(device, cpu_choice) if dtype_name == "auto" else _DTYPES[dtype_name]
    return Precision(device, dtype)
