"""Build a GPT from a loaded checkpoint, with its raw or averaged (EMA) weights."""

from __future__ import annotations

from typing import Literal

import torch

from ml_playground.core.errors import CheckpointError
from ml_playground.models.core.kernels import LinearKernelSetting, resolve_linear_kernel
from ml_playground.models.core.model import GPT, GPTConfig
from ml_playground.training.checkpointing.service import LoadedCheckpoint


def model_from_checkpoint(
    loaded: LoadedCheckpoint,
    device: torch.device,
    weights: Literal["raw", "ema"] = "raw",
    linear_kernel: LinearKernelSetting = "aten",
) -> GPT:
    try:
        config = GPTConfig(**loaded.manifest["model_config"])
    except TypeError as exc:
        raise CheckpointError(f"model config not understood ({exc})", path=loaded.path / "manifest.json") from None
    model = GPT(config)
    state = loaded.model
    if weights == "ema":
        if loaded.ema is None:
            raise CheckpointError(
                "this checkpoint has no EMA weights (train with train.ema.enabled = true)", path=loaded.path
            )
        state = {**loaded.model, **loaded.ema}
        if config.tie_weights:
            state["lm_head.weight"] = state["wte.weight"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit the model ({str(exc).splitlines()[0]})", path=loaded.path) from None
    return model.to(device).use_linear_kernel(resolve_linear_kernel(linear_kernel, device)).eval()
