"""Sample from a fine-tuned model: base + adapters (``adapters/best|last`` or a folder), or ``merged``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.atomic import atomic_write_text
from ml_playground.core.devices import resolve_precision
from ml_playground.core.errors import CheckpointError, ConfigError
from ml_playground.finetune.adapters import ADAPTERS_DIR, MERGED_DIR, check_adapters_match
from ml_playground.finetune.hub import load_pretrained_model, load_pretrained_tokenizer
from ml_playground.finetune.lora import load_adapters


def resolve_weights(config: ExperimentConfig) -> tuple[str, Path | None]:
    """('merged', folder) | ('adapters', folder) | ('base', None), refusing a bare base when adapters are required."""
    out = config.train.out_dir
    which = config.sample.checkpoint
    if which == "merged":
        folder = out / MERGED_DIR
        if not (folder / "config.json").is_file():
            raise CheckpointError("no merged model yet (train with train.save_merged_on_best = true)", path=folder)
        return "merged", folder
    folder = out / ADAPTERS_DIR / which if which in ("best", "last") else Path(which).expanduser()
    if (folder / "adapter_config.json").is_file():
        return "adapters", folder
    if config.sample.require_adapters:
        raise CheckpointError(
            "no LoRA adapters here (train first, or set sample.require_adapters = false to sample the base model)",
            path=folder,
        )
    return "base", None


def _prompt_ids(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("the tokenizer has no chat template; set sample.chat = false", key="sample.chat")
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(prompt, add_special_tokens=False)["input_ids"]]


def load_for_sampling(config: ExperimentConfig) -> tuple[Any, Any, str]:
    """(model in eval mode, tokenizer, a description of what was loaded)."""
    tc = config.train
    assert tc.base_model is not None
    precision = resolve_precision(tc.device, tc.dtype)
    kind, folder = resolve_weights(config)
    if kind == "merged":
        assert folder is not None
        model = load_pretrained_model(str(folder), revision=None, dtype=precision.dtype, key="sample.checkpoint")
        tokenizer = load_pretrained_tokenizer(str(folder), key="sample.checkpoint")
        described = f"merged model {folder}"
    else:
        model = load_pretrained_model(tc.base_model, revision=tc.revision, dtype=precision.dtype)
        if kind == "adapters":
            assert folder is not None
            check_adapters_match(folder, tc.base_model)
            model = load_adapters(model, folder)
            tokenizer = load_pretrained_tokenizer(str(folder), key="sample.checkpoint")
            described = f"{tc.base_model} + adapters {folder}"
        else:
            tokenizer = load_pretrained_tokenizer(tc.base_model, tc.revision)
            described = f"{tc.base_model} without adapters"
    return model.to(precision.device).eval(), tokenizer, described


def sample_finetuned(config: ExperimentConfig, prompt: str, emit: Callable[[str], None]) -> list[tuple[str, Path]]:
    sc = config.sample
    model, tokenizer, _ = load_for_sampling(config)
    ids = _prompt_ids(tokenizer, prompt, sc.chat)
    if not ids:
        raise ConfigError("prompt is empty after tokenization; give at least one token", key="sample.prompt")
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = []
    for index in range(sc.num_samples):
        torch.manual_seed(sc.seed + index)
        greedy = sc.temperature == 0
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=sc.max_new_tokens,
                do_sample=not greedy,
                temperature=None if greedy else sc.temperature,
                top_k=None if greedy else sc.top_k,
                top_p=None if greedy else sc.top_p,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )
        new_text = tokenizer.decode(output[0, len(ids) :].tolist(), skip_special_tokens=True)
        text = prompt + new_text
        emit(text)
        emit("\n---------------\n")
        path = config.train.out_dir / "samples" / f"sample-{stamp}-{index}.txt"
        atomic_write_text(path, text)
        results.append((text, path))
    return results
