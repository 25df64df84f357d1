"""The decoder layers of a pretrained model compiled for the training step (regional compilation).

A decoder runs one layer's code once per layer. ``torch.compile`` of each layer's forward compiles
that code once and reuses it for every layer (their weights are inputs to the graph, not constants).
Inductor then generates fused kernels for the CPU at hand: normalisations, activations, the rotary
embedding and LoRA's additions become a few loops instead of dozens of operators. Compiling the whole
model gave a step a little faster still (1.64x eager against 1.55x, bfloat16, SmolLM2 at 4 x 256 on a
2-core Xeon), but after 99 s of compile against about 17 s here; inductor caches its kernels on disk,
so later runs start faster.

Only calls that record gradients take the compiled path. Evaluation and sampling run without
gradients and with a KV cache; they stay eager, so they neither recompile nor wait for a compile.
A compile that fails (no C++ compiler, an operator inductor cannot lower) gives one warning, and the
run goes on eager.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

_DYNAMO_GRAD_READ = "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed"

Compiler = Callable[[Callable[..., Any]], Callable[..., Any]]


class _Fallback:
    """Shared by a model's layers: after one failed compile, every layer runs eager."""

    def __init__(self, warn: Callable[[str], None]) -> None:
        self.eager = False
        self._warn = warn

    def failed(self, exc: Exception) -> None:
        if not self.eager:
            self.eager = True
            self._warn(f"warning: torch.compile is not available here ({type(exc).__name__}); training without it")


class TrainingForward:
    """A layer's forward: compiled while gradients are recorded, eager otherwise."""

    def __init__(self, eager: Callable[..., Any], compiled: Callable[..., Any], fallback: _Fallback) -> None:
        self.eager = eager
        self.compiled = compiled
        self._fallback = fallback

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._fallback.eager or not torch.is_grad_enabled():
            return self.eager(*args, **kwargs)
        try:
            with warnings.catch_warnings():
                # Dynamo reads ``.grad`` of the activations while it traces; PyTorch warns about its own read
                warnings.filterwarnings("ignore", message=_DYNAMO_GRAD_READ, category=UserWarning)
                return self.compiled(*args, **kwargs)
        except Exception as exc:  # compile failures come from many backends; all mean "run eager"
            self._fallback.failed(exc)
            return self.eager(*args, **kwargs)


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The repeated blocks of a ``transformers`` causal LM's decoder (``layers`` in Llama, Qwen2, Mistral...)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    layers = getattr(decoder, "layers", None)
    return layers if isinstance(layers, nn.ModuleList) and len(layers) > 0 else None


def compile_layers_for_training(
    model: nn.Module, warn: Callable[[str], None], compiler: Compiler = torch.compile
) -> int:
    """Give each decoder layer of ``model`` a forward that is compiled for training steps; the number of
    layers changed (0 where the model has no ``layers`` list to compile, with a warning)."""
    layers = decoder_layers(model)
    if layers is None:
        warn(f"warning: {type(model).__name__} has no decoder layers to compile; training without torch.compile")
        return 0
    fallback = _Fallback(warn)
    eager = [layer.forward for layer in layers]
    try:
        compiled = [compiler(forward) for forward in eager]
    except Exception as exc:  # a backend that cannot be set up at all: nothing changed, run eager
        fallback.failed(exc)
        return 0
    for layer, forward, fast in zip(layers, eager, compiled, strict=True):
        # an instance attribute: nn.Module.__call__ finds it, and the state dict's names are unchanged
        layer.forward = TrainingForward(forward, fast, fallback)
    return len(layers)
