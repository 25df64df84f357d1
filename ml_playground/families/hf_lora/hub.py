"""Load a pretrained causal LM (Hub id or local folder); failures become one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ml_playground.core.gguf_import import hf_folder_for
from ml_playground.core.hub import DEFAULT_CACHE, _not_loadable, load_pretrained_tokenizer, quiet_transformers

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["load_pretrained_model", "load_pretrained_tokenizer", "quiet_transformers"]


def load_pretrained_model(
    name: str,
    *,
    revision: str | None,
    dtype: torch.dtype,
    key: str = "train.model.base_model",
    cache_dir: Path = DEFAULT_CACHE,
) -> PreTrainedModel:
    """A ``transformers`` causal LM.

    ``name``: a Hub id, a folder, or a ``.gguf`` file (converted once into ``cache_dir/gguf``)."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    source = hf_folder_for(name, cache_dir, key)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, revision=None if source != name else revision, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise _not_loadable("base model", name, key, exc) from None
    return model
