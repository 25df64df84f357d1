"""A prepared dataset's description: ``meta.json`` and the names of the files beside it.

Kept apart from the preparer so that readers of a dataset (the batch sampler, sampling, the
trainer) need not import what writes one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ml_playground.core.errors import DataError

META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"  # the same name as inside a checkpoint folder


def read_meta(dataset_dir: Path) -> dict[str, Any]:
    path = dataset_dir / META_FILE
    try:
        meta: dict[str, Any] = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise DataError("no prepared dataset here (run prepare first)", path=dataset_dir) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"unreadable dataset metadata ({exc})", path=path) from None
    return meta


def text_format(meta: dict[str, Any]) -> dict[str, Any]:
    """How a dataset's text is laid out, as a checkpoint records it: ``{"kind": "chat", "template": ...,
    "end_of_turn": [...], "turns": ...}`` for conversations through a chat template, else ``{"kind": "text"}``."""
    chat = meta.get("chat")
    return {"kind": "chat", **chat} if isinstance(chat, dict) else {"kind": "text"}
