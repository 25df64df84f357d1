"""Configs written before the model family became explicit: say in one line how to write them now."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Keys that moved into [train.model] of one family: old key -> (family kind, new key)
_MOVED = {
    "base_model": ("hf_lora", "train.model.base_model"),
    "revision": ("hf_lora", "train.model.revision"),
    "lora": ("hf_lora", "train.model.lora"),
    "gradient_checkpointing": ("hf_lora", "train.model.gradient_checkpointing"),
    "save_merged_on_best": ("hf_lora", "train.model.save_merged_on_best"),
    "linear_kernel": ("gpt", "train.model.linear_kernel"),
    "compile": ("gpt", "train.model.compile"),
    "ema": ("gpt", "train.model.ema"),
}


def old_shape(tree: Mapping[str, Any]) -> tuple[str, str] | None:
    """(old key, how to write it now) for the first key in the pre-family shape, else None."""
    train = tree.get("train")
    if not isinstance(train, Mapping):
        return None
    for key, (kind, new_key) in _MOVED.items():
        if key in train:
            if kind == "hf_lora":
                how = (
                    f"is now {new_key}: fine-tuning is its own model family, written as [train.model] with "
                    'kind = "hf_lora", base_model, revision, block_size, gradient_checkpointing, '
                    "save_merged_on_best and [train.model.lora]"
                )
            else:
                how = f'is now {new_key} (a key of the GPT family, [train.model] kind = "gpt")'
            return f"train.{key}", how
    data = train.get("data")
    if isinstance(data, Mapping) and "block_size" in data:
        return "train.data.block_size", 'is now train.model.block_size (with [train.model] kind = "hf_lora")'
    return None
