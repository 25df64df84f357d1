"""The LoRA loss with the output head applied only at targets: the same loss and gradients as full logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ml_playground.configuration.models import LoraConfig
from ml_playground.core.losses import IGNORE_INDEX, cross_entropy, head_cross_entropy
from ml_playground.families.hf_lora.hub import load_pretrained_model
from ml_playground.families.hf_lora.lora import apply_lora
from ml_playground.families.hf_lora.modules import LogitsOnly, target_loss
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm

pytestmark = pytest.mark.unit

TEXT = "Sehr geehrte Frau Präsidentin! Meine Damen und Herren! Wir beraten heute den Haushalt. " * 3


def _lora(tmp_path: Path) -> tuple[nn.Module, LogitsOnly]:
    base = load_pretrained_model(str(build_tiny_causal_lm(tmp_path / "tiny", [TEXT])), revision=None,
                                 dtype=torch.float32)  # fmt: skip
    lora = LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    model = LogitsOnly(apply_lora(base, lora))
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapters something to contribute
            nn.init.normal_(parameter, std=0.05)
    return base, model


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def test_targets_only_gives_the_full_logits_loss_and_gradients(tmp_path: Path) -> None:
    base, model = _lora(tmp_path)
    loss = target_loss(base, model)
    assert loss.__name__ == "split"  # the probe found the split path exact for this model
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 200, (3, 16), generator=generator)
    y = torch.randint(0, 200, (3, 16), generator=generator)
    y[:, :9] = IGNORE_INDEX  # a chat-like mask: the prompt is no target
    y[2, -2:] = IGNORE_INDEX  # and a padded tail
    split_value = loss(x, y)
    split_value.backward()  # type: ignore[no-untyped-call]
    split_grads = _grads(model)
    full_value = cross_entropy(model(x), y)
    full_value.backward()  # type: ignore[no-untyped-call]
    full_grads = _grads(model)
    assert torch.allclose(split_value, full_value, rtol=1e-5, atol=1e-6)
    assert split_grads.keys() == full_grads.keys()
    assert split_grads
    assert all("lora_" in name for name in split_grads)
    for name, grad in split_grads.items():
        assert torch.allclose(grad, full_grads[name], rtol=1e-4, atol=1e-6), name


def test_all_targets_present_runs_the_head_everywhere() -> None:
    hidden = torch.randn(2, 5, 4)
    head = nn.Linear(4, 7)
    targets = torch.randint(0, 7, (2, 5))
    assert torch.allclose(head_cross_entropy(hidden, head, targets), cross_entropy(head(hidden), targets))


def test_a_model_whose_logits_are_more_than_its_head_keeps_the_full_logits(tmp_path: Path) -> None:
    base, model = _lora(tmp_path)

    class Scaled(LogitsOnly):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return 0.5 * super().forward(idx)  # what a logit scale or soft cap does to the split path

    scaled = Scaled(model.lm)
    loss = target_loss(base, scaled)
    assert loss.__name__ == "full"
    x = torch.randint(0, 200, (1, 6))
    assert torch.equal(loss(x, x), cross_entropy(scaled(x), x))
    assert target_loss(nn.Linear(2, 2), model).__name__ == "full"  # no decoder to split off
