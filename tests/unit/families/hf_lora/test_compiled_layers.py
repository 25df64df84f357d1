"""Decoder layers compiled for training steps: the same loss and gradients as eager, inference stays eager."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ml_playground.families.hf_lora.compiled_layers import TrainingForward, compile_layers_for_training
from tests.unit.families.hf_lora.test_target_loss import _grads, _lora

pytestmark = pytest.mark.unit


class Counted:
    """A compiler that counts the calls of what it compiled."""

    def __init__(self, compiler: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        self.compiler = compiler
        self.calls = 0

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        compiled = self.compiler(fn)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return compiled(*args, **kwargs)

        return counted


def _step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = model(x)[:, :-1].log_softmax(-1).gather(-1, x[:, 1:, None]).mean().neg()
    loss.backward()  # type: ignore[no-untyped-call]
    return loss.detach(), _grads(model)


def test_compiled_layers_train_like_eager_and_leave_inference_eager(tmp_path: Path) -> None:
    base, model = _lora(tmp_path)
    x = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(3))
    eager_loss, eager_grads = _step(model, x)
    compiler = Counted(torch.compile)
    warnings: list[str] = []
    assert compile_layers_for_training(base, warnings.append, compiler) == 2
    compiled_loss, compiled_grads = _step(model, x)
    assert compiler.calls == 2  # each layer's training forward went through the compiled graph
    assert warnings == []
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in compiled_grads.items():
        assert torch.allclose(grad, eager_grads[name], rtol=1e-4, atol=1e-6), name
    with torch.no_grad():
        model(x)
    assert compiler.calls == 2  # evaluation and sampling run eager
    assert "lora_A" in next(name for name in model.state_dict() if "lora_" in name)  # names unchanged


def test_a_failing_compile_warns_once_and_trains_eager(tmp_path: Path) -> None:
    base, model = _lora(tmp_path)
    x = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(4))
    eager_loss, _ = _step(model, x)

    def broken(fn: Callable[..., Any]) -> Callable[..., Any]:
        def fails(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("no C++ compiler")

        return fails

    warnings: list[str] = []
    assert compile_layers_for_training(base, warnings.append, broken) == 2
    loss, _ = _step(model, x)
    loss_again, _ = _step(model, x)
    assert warnings == ["warning: torch.compile is not available here (RuntimeError); training without it"]
    assert torch.allclose(loss, eager_loss)
    assert torch.allclose(loss_again, eager_loss)


def test_a_backend_that_cannot_be_set_up_changes_nothing(tmp_path: Path) -> None:
    base, _ = _lora(tmp_path)
    warnings: list[str] = []
    no_backend = functools.partial(torch.compile, backend="no_such_backend")
    assert compile_layers_for_training(base, warnings.append, no_backend) == 0
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: torch.compile is not available here (")
    assert not any(isinstance(layer.forward, TrainingForward) for layer in base.model.layers)


def test_a_model_without_decoder_layers_is_left_alone() -> None:
    warnings: list[str] = []
    assert compile_layers_for_training(nn.Linear(2, 2), warnings.append) == 0
    assert warnings == ["warning: Linear has no decoder layers to compile; training without torch.compile"]
