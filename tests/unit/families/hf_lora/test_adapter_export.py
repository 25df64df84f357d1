"""The merged model is written once, when training ends, from the best adapters, and never holds a stale step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ml_playground.configuration.models import LoraConfig
from ml_playground.families.hf_lora.adapters import ADAPTERS_DIR, MERGED_DIR, AdapterExportHook
from ml_playground.families.hf_lora.hub import load_pretrained_model, load_pretrained_tokenizer
from ml_playground.families.hf_lora.lora import apply_lora
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm
from ml_playground.training.checkpointing.service import CheckpointPayload, CheckpointService
from ml_playground.training.context import LoopState, TrainingContext

pytestmark = pytest.mark.unit

TEXT = "Sehr geehrte Frau Präsidentin! Meine Damen und Herren! Wir beraten heute den Haushalt. " * 3


def test_merged_is_written_at_the_end_from_the_best_adapters_and_removed_when_it_goes_stale(tmp_path: Path) -> None:
    folder = build_tiny_causal_lm(tmp_path / "tiny", [TEXT])
    base = load_pretrained_model(str(folder), revision=None, dtype=torch.float32)
    peft_model = apply_lora(base, LoraConfig(r=2, alpha=4, dropout=0.0, target_modules=["q_proj"]))
    out = tmp_path / "run"
    service = CheckpointService(out, keep_last=5)
    merges: list[Path] = []

    def merge(adapters: Path, target: Path) -> None:  # what make_merger writes, without loading the base again
        merges.append(adapters)
        target.mkdir(exist_ok=True)  # replace_dir has made it
        (target / "from.txt").write_text((adapters / "adapter_config.json").read_text())

    def new_hook() -> AdapterExportHook:
        tokenizer = load_pretrained_tokenizer(str(folder))
        return AdapterExportHook(peft_model=peft_model, tokenizer=tokenizer, out_dir=out, service=service, merge=merge)

    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    ctx = TrainingContext(model=peft_model, optimizer=optimizer, ema=None, state=LoopState(), max_iters=3, hooks=[])

    def checkpoint(step: int, tags: set[str]) -> Path:
        payload = CheckpointPayload(step=step, model={}, training={}, state={}, config={}, model_config={})
        return service.save(payload, tags)

    hook = new_hook()
    hook.on_train_start(ctx)
    hook.on_checkpoint_saved(ctx, checkpoint(1, {"last", "best"}))
    assert (out / ADAPTERS_DIR / "best" / "adapter_config.json").is_file()
    assert merges == []  # not at every new best
    (out / MERGED_DIR).mkdir()  # a merged model of an earlier step
    hook.on_checkpoint_saved(ctx, checkpoint(2, {"last", "best"}))
    assert not (out / MERGED_DIR).exists()  # stale the moment a new best is saved
    hook.on_checkpoint_saved(ctx, checkpoint(3, {"last"}))
    hook.on_train_end(ctx)
    assert merges == [out / ADAPTERS_DIR / "best"]
    assert (out / MERGED_DIR / "from.txt").is_file()

    resumed = new_hook()  # a run that resumes with merged/ in place has nothing to merge
    resumed.on_train_start(ctx)
    resumed.on_train_end(ctx)
    assert len(merges) == 1
    (out / MERGED_DIR / "from.txt").unlink()
    (out / MERGED_DIR).rmdir()  # killed after a new best, before the end: the resumed run merges at its end
    resumed = new_hook()
    resumed.on_train_start(ctx)
    resumed.on_train_end(ctx)
    assert len(merges) == 2
    assert (out / MERGED_DIR).is_dir()
