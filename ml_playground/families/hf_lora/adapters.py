"""Adapters in PEFT's standard format under ``out_dir/adapters/{last,best}``, and the merged model.

Each is written to a temporary folder beside its target and renamed into place, so a reader
finds either the previous complete folder or the new one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ml_playground.core.atomic import replace_dir
from ml_playground.core.errors import CheckpointError
from ml_playground.training.checkpointing.service import CheckpointService
from ml_playground.training.context import Hook, HookPhase, TrainingContext

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

ADAPTERS_DIR = "adapters"
MERGED_DIR = "merged"


def adapter_base_model(adapter_dir: Path) -> str | None:
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"not a PEFT adapter folder ({exc})", path=adapter_dir) from None
    base = config.get("base_model_name_or_path")
    return str(base) if base is not None else None


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_adapters_match(adapter_dir: Path, base_model: str, loaded_from: str | None = None) -> None:
    """Refuse adapters trained on another base model, naming both. ``loaded_from``: where ``base_model`` was
    really read (a ``.gguf`` file's cached Hugging Face folder, which PEFT records as the adapters' base)."""
    trained_on = adapter_base_model(adapter_dir)
    matches = trained_on is None or _same_model(trained_on, base_model)
    if not matches and loaded_from is not None:
        matches = _same_model(str(trained_on), loaded_from)
    if not matches:
        raise CheckpointError(
            f"these adapters were trained on base model {trained_on!r}, not on {base_model!r}; "
            "set train.model.base_model to the model they belong to",
            path=adapter_dir,
        )


class AdapterExportHook(Hook):
    """After each checkpoint: ``adapters/last``; when it is the best: ``adapters/best``. ``merged/`` (the best
    adapters merged into the base) is written once, when training ends: merging loads and writes the
    whole base, 6-8 s for SmolLM2 (about two LoRA steps), which used to be paid at every new best. A new
    best during training removes an older ``merged/`` first, so the folder never holds another step's weights."""

    phase = HookPhase.REPORT  # at the end, after the checkpoint hook has written the last checkpoint

    def __init__(
        self,
        *,
        peft_model: PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        out_dir: Path,
        service: CheckpointService,
        merge: Callable[[Path, Path], None] | None = None,
    ) -> None:
        self.peft_model = peft_model
        self.tokenizer = tokenizer
        self.out_dir = out_dir
        self.service = service
        self.merge = merge
        self.merge_pending = False

    def on_train_start(self, ctx: TrainingContext) -> None:
        best, merged = self.out_dir / ADAPTERS_DIR / "best", self.out_dir / MERGED_DIR
        self.merge_pending = (best / "adapter_config.json").is_file() and not merged.is_dir()  # a resumed run

    def _save_adapters(self, target: Path) -> None:
        def write(tmp: Path) -> None:
            self.peft_model.save_pretrained(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))

        replace_dir(target, write)

    def on_checkpoint_saved(self, ctx: TrainingContext, path: Path) -> None:
        adapters = self.out_dir / ADAPTERS_DIR
        self._save_adapters(adapters / "last")
        best = self.service.pointer_info("best")
        if best is not None and self.service.resolve("best") == path:
            self._save_adapters(adapters / "best")
            if self.merge is not None:
                shutil.rmtree(self.out_dir / MERGED_DIR, ignore_errors=True)
                self.merge_pending = True

    def on_train_end(self, ctx: TrainingContext) -> None:
        if self.merge is not None and self.merge_pending:
            merge, best = self.merge, self.out_dir / ADAPTERS_DIR / "best"
            replace_dir(self.out_dir / MERGED_DIR, lambda tmp: merge(best, tmp))
            self.merge_pending = False
