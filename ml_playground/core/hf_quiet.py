"""Keep transformers and huggingface_hub from drawing progress bars of their own: our console shows progress."""

from __future__ import annotations


def quiet_transformers() -> None:
    from huggingface_hub.utils.tqdm import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped in transformers
