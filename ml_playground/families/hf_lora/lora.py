"""Wrap a causal LM with PEFT LoRA adapters, checking the target modules first."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ml_playground.configuration.models import LoraConfig
from ml_playground.core.errors import ConfigError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct last name parts of the model's Linear layers (what ``target_modules`` usually lists)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})


def _matches(target: str, module_names: list[str]) -> bool:
    return any(name == target or name.endswith("." + target) for name in module_names)


def apply_lora(model: PreTrainedModel, lora: LoraConfig) -> PeftModel:
    """A ``peft.PeftModel`` with only the LoRA weights trainable; unknown targets are a config error."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    unmatched = [target for target in lora.target_modules if not _matches(target, names)]
    if unmatched:
        raise ConfigError(
            f"{', '.join(unmatched)} match no Linear module of the base model; "
            f"it has: {', '.join(linear_module_names(model))}",
            key="train.model.lora.target_modules",
        )
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    with peft_quietly():
        adapted = get_peft_model(model, peft_config)
    assert isinstance(adapted, PeftModel)  # mixed adapter types are never asked for here
    return adapted


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` property (renamed in transformers 5);
    the FutureWarning is about peft's code, not the user's, and says nothing they can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_adapters(base: PreTrainedModel, adapter_dir: Path) -> PeftModel:
    """Base model + PEFT adapters from a folder (inference mode)."""
    from peft import PeftModel

    with peft_quietly():
        return PeftModel.from_pretrained(base, str(adapter_dir))


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def merged(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The base model with the adapters folded into its weights (a plain model stays as it is).

    Inference runs on this too: one product per projection instead of three, and no PEFT layer in
    the way (decoding is bound by the time of each small step). Export writes the same weights.
    """
    from peft import PeftModel
    from transformers import PreTrainedModel

    if not isinstance(model, PeftModel):
        return model
    base = model.merge_and_unload()
    assert isinstance(base, PreTrainedModel)
    return base
