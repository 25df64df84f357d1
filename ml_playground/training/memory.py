"""How much memory a training run needs, estimated before it starts, and whether the device has it.

Weights at their load dtype; gradients and AdamW's two moments (float32) for the trainable
parameters only; activations after Korthikanti et al. (2022), "Reducing Activation Recomputation
in Large Transformer Models": per layer and token about ``h * (34 + 5 * a * s / h)`` bytes at 2
bytes per value (doubled for float32), or only the layer input (``2 * h`` bytes) per layer with
gradient checkpointing plus one layer recomputed; plus float32 logits and their gradient. An
estimate, not a measurement: allocator overhead and framework buffers come on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ml_playground.core.errors import ConfigError

GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    trainable: int
    hidden_size: int
    num_layers: int
    num_heads: int
    vocab_size: int


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        unit, size = ("GiB", GIB) if self.total >= GIB / 10 else ("MiB", 1024**2)
        parts = (
            f"weights {self.weights / size:.2f} + gradients {self.gradients / size:.2f} + "
            f"optimizer {self.optimizer / size:.2f} + activations {self.activations / size:.2f}"
        )
        return f"memory estimate: {parts} = {self.total / size:.2f} {unit}"


def estimate_memory(
    shape: ModelShape,
    *,
    weight_dtype: torch.dtype,
    batch_size: int,
    sequence_length: int,
    gradient_checkpointing: bool,
) -> MemoryEstimate:
    value_bytes = torch.finfo(weight_dtype).bits // 8
    tokens = batch_size * sequence_length
    h, a, s = shape.hidden_size, shape.num_heads, sequence_length
    scale = value_bytes / 2  # the paper's figures are for 2-byte values
    full_layer = tokens * h * (34 + 5 * a * s / h) * scale
    if gradient_checkpointing:
        activations = shape.num_layers * tokens * 2 * h * scale + full_layer
    else:
        activations = shape.num_layers * full_layer
    logits = 2 * tokens * shape.vocab_size * 4
    return MemoryEstimate(
        weights=shape.parameters * value_bytes,
        gradients=shape.trainable * 4,
        optimizer=shape.trainable * 8,
        activations=int(activations + logits),
    )


def available_memory(device: torch.device) -> tuple[int, str]:
    """Bytes the run may use on ``device``, and where the figure comes from."""
    if device.type == "cuda":  # pragma: no cover (no GPU on the CI machine)
        _, total = torch.cuda.mem_get_info(device)
        return int(total), f"{torch.cuda.get_device_name(device)} memory"
    if device.type == "mps":  # pragma: no cover
        return int(torch.mps.recommended_max_memory()), "MPS recommended maximum (unified memory)"
    import psutil

    return int(psutil.virtual_memory().available), "available system memory"


LORA_ADVICE = (
    "lower train.data.batch_size or train.model.block_size, set train.model.gradient_checkpointing = true, "
    "or use bfloat16 on a GPU"
)


def check_fits(
    estimate: MemoryEstimate,
    available: int,
    where: str,
    *,
    key: str = "train.model.base_model",
    advice: str = LORA_ADVICE,
) -> None:
    if estimate.total > available:
        raise ConfigError(f"{estimate.describe()}, but only {available / GIB:.2f} GiB ({where}); {advice}", key=key)
