"""Export a from-scratch GPT checkpoint: a Hugging Face GPT-2 folder, a GGUF file, or GGUF + Modelfile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ml_playground.configuration.models import ExperimentConfig, SampleConfig
from ml_playground.core.errors import CheckpointError
from ml_playground.core.tokenizer import load_tokenizer
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.export.hf_tokenizer import to_pretrained_tokenizer
from ml_playground.export.ollama import modelfile
from ml_playground.export.request import ExportRequest, ExportResult, refuse_to_overwrite, write_export
from ml_playground.families.gpt.gguf import write_gguf
from ml_playground.families.gpt.hf import to_transformers
from ml_playground.families.gpt.model import GPTConfig
from ml_playground.training.checkpointing.service import CheckpointService, LoadedCheckpoint


def _checkpoint(config: ExperimentConfig, which: str) -> LoadedCheckpoint:
    service = CheckpointService(config.train.out_dir)
    try:
        path = service.resolve(which)
    except CheckpointError as exc:
        raise CheckpointError(f"nothing to export: {exc.message}", path=exc.path) from None
    return service.load(path, with_training_state=False)


BLANK_LINE = "\n\n"


def write_hf(
    target: Path, config: GPTConfig, state: dict[str, torch.Tensor], tokenizer: Tokenizer, sample: SampleConfig
) -> None:
    from transformers import GenerationConfig

    from ml_playground.core.hub import quiet_transformers

    quiet_transformers()
    model = to_transformers(config, state)
    model.save_pretrained(str(target))
    stop = tokenizer.stop_texts()
    fast = to_pretrained_tokenizer(tokenizer, eos_token=stop[0] if stop else None)
    fast.save_pretrained(str(target))
    greedy = sample.temperature == 0
    GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=not greedy,
        temperature=None if greedy else sample.temperature,
        top_k=None if greedy else sample.top_k,
        top_p=None if greedy else sample.top_p,
        max_new_tokens=sample.max_new_tokens,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.eos_token_id,
    ).save_pretrained(str(target))


def export_gpt(
    config: ExperimentConfig, request: ExportRequest, write_hook: Callable[[Path], None] | None = None
) -> ExportResult:
    """``write_hook`` is called on the temporary folder before the swap (tests use it to fail mid-export)."""
    refuse_to_overwrite(request)
    loaded = _checkpoint(config, request.checkpoint)
    try:
        model_config = GPTConfig(**loaded.manifest["model_config"])
    except TypeError as exc:
        raise CheckpointError(f"model config not understood ({exc})", path=loaded.path) from None
    state = loaded.weights(config.sample.weights)
    tokenizer = load_tokenizer(loaded.tokenizer_dir, config.prepare.cache_dir)
    gguf_name = f"{request.name}-{request.gguf_type}.gguf"

    def write(tmp: Path) -> None:
        if request.format == "hf":
            write_hf(tmp, model_config, state, tokenizer, config.sample)
        else:
            write_gguf(tmp / gguf_name, model_config, state, tokenizer, request.gguf_type, request.name)
        if request.format == "ollama":
            # a vocabulary without an end token (char, plain BPE) stops at a blank line: the corpora
            # separate speeches (and Shakespeare's speeches) with one, so a sample ends with its speech
            stop = tokenizer.stop_texts() or [BLANK_LINE]
            (tmp / "Modelfile").write_text(modelfile(gguf_name, config.sample, stop, model_config.block_size), "utf-8")
        if write_hook is not None:
            write_hook(tmp)

    return write_export(request, write, loaded.step)
