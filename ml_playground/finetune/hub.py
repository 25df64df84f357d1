"""Load a pretrained causal LM (Hub id or local folder); failures become one clear line."""

from __future__ import annotations

from typing import Any

import torch

from ml_playground.core.hub import _not_loadable, load_pretrained_tokenizer, quiet_transformers

__all__ = ["load_pretrained_model", "load_pretrained_tokenizer", "quiet_transformers"]


def load_pretrained_model(
    name: str, *, revision: str | None, dtype: torch.dtype, key: str = "train.model.base_model"
) -> Any:
    """A ``transformers`` ``PreTrainedModel`` (typed ``Any``: its methods are only partly annotated)."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise _not_loadable("base model", name, key, exc) from None
    return model
