"""Hugging Face loading shared by the tokenizer and the fine-tuning path: one clear line when it fails."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ml_playground.core.errors import ConfigError
from ml_playground.core.hf_quiet import quiet_transformers

__all__ = ["DEFAULT_CACHE", "load_pretrained_tokenizer", "quiet_transformers"]

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _not_loadable(what: str, name: str, key: str, exc: Exception) -> ConfigError:
    if Path(name).expanduser().is_dir():
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ConfigError(f"cannot load {what.removesuffix(' of')} from the folder {name} ({first})", key=key)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    why = "downloads are off (HF_HUB_OFFLINE=1)" if offline else "it could not be downloaded"
    return ConfigError(
        f"cannot load {what} {name!r}: not a local folder, not in the Hugging Face cache ({_hub_cache()}), "
        f"and {why}; run once online to download it, or set {key} to a local folder",
        key=key,
    )


DEFAULT_CACHE = Path("~/.cache/ml_playground")


def load_pretrained_tokenizer(
    name: str, revision: str | None = None, key: str = "train.model.base_model", cache_dir: Path = DEFAULT_CACHE
) -> PreTrainedTokenizerBase:
    """A Hub id, a folder, or a ``.gguf`` file (converted once into ``cache_dir/gguf``)."""
    from transformers import AutoTokenizer

    from ml_playground.core.gguf_import import hf_folder_for

    quiet_transformers()
    source = hf_folder_for(name, cache_dir, key)
    try:
        return AutoTokenizer.from_pretrained(source, revision=None if source != name else revision)
    except (OSError, ValueError) as exc:
        raise _not_loadable("the tokenizer of", name, key, exc) from None
