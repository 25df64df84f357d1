"""``export``: a checkpoint as a Hugging Face folder, a GGUF file, or GGUF + an Ollama Modelfile.

Everything is written into a temporary folder beside the target and renamed into place at the end,
so a failure (disk full, permissions) leaves no partial export behind. A target folder that exists
and is not empty is replaced only with ``--force``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ml_playground.configuration.models import ExperimentConfig, SampleConfig
from ml_playground.core.atomic import replace_dir
from ml_playground.core.errors import CheckpointError, UserError
from ml_playground.core.tokenizer import load_tokenizer
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.data_pipeline.header import END_TOKEN
from ml_playground.export.gguf_writer import GgufType, write_gguf
from ml_playground.export.hf import ExportError, to_transformers
from ml_playground.export.hf_tokenizer import to_pretrained_tokenizer
from ml_playground.export.ollama import modelfile
from ml_playground.models.core.model import GPTConfig
from ml_playground.training.checkpointing.service import CheckpointService, LoadedCheckpoint

ExportFormat = Literal["hf", "gguf", "ollama"]


@dataclass(frozen=True)
class ExportRequest:
    format: ExportFormat
    out_dir: Path
    checkpoint: str
    force: bool = False
    name: str = "model"
    gguf_type: GgufType = "f16"


@dataclass
class ExportResult:
    out_dir: Path
    files: list[str]
    step: int
    notes: list[str] = field(default_factory=list)


def default_out_dir(config: ExperimentConfig, fmt: str) -> Path:
    return config.export.out_dir or config.train.out_dir.parent / f"export-{fmt}"


def _checkpoint(config: ExperimentConfig, which: str) -> LoadedCheckpoint:
    service = CheckpointService(config.train.out_dir)
    try:
        path = service.resolve(which)
    except CheckpointError as exc:
        raise CheckpointError(f"nothing to export: {exc.message}", path=exc.path) from None
    return service.load(path, with_training_state=False)


def _weights(loaded: LoadedCheckpoint, which: str) -> dict[str, torch.Tensor]:
    if which == "ema":
        if loaded.ema is None:
            raise CheckpointError("this checkpoint has no EMA weights", path=loaded.path)
        return {**loaded.model, **loaded.ema}
    return dict(loaded.model)


def _stop_tokens(tokenizer: Tokenizer) -> list[str]:
    from ml_playground.core.tokenizer import BpeTokenizer

    if isinstance(tokenizer, BpeTokenizer) and tokenizer.token_id(END_TOKEN) is not None:
        return [END_TOKEN]
    if tokenizer.kind == "tiktoken":
        return ["<|endoftext|>"]
    return []


def write_hf(
    target: Path, config: GPTConfig, state: dict[str, torch.Tensor], tokenizer: Tokenizer, sample: SampleConfig
) -> None:
    from transformers import GenerationConfig

    from ml_playground.finetune.hub import quiet_transformers

    quiet_transformers()
    model = to_transformers(config, state)
    model.save_pretrained(str(target))
    stop = _stop_tokens(tokenizer)
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


def run_export(
    config: ExperimentConfig,
    request: ExportRequest,
    *,
    run: Callable[[list[str]], subprocess.CompletedProcess[str]] | None = None,
    which: Callable[[str], str | None] = shutil.which,
    write_hook: Callable[[Path], None] | None = None,
) -> ExportResult:
    """``run`` and ``which`` start and find ``ollama``; ``write_hook`` is called on the temporary folder before
    the swap (tests use it to fail mid-export)."""
    if config.train.base_model is not None:
        raise ExportError(
            "LoRA runs export their merged model: train with train.save_merged_on_best = true, then use "
            f"{config.train.out_dir / 'merged'} (a Hugging Face folder; llama.cpp's convert_hf_to_gguf.py makes GGUF)"
        )
    target = request.out_dir
    if target.exists() and any(target.iterdir()) and not request.force:
        raise UserError("exists and is not empty; use --force to replace it", path=target)
    loaded = _checkpoint(config, request.checkpoint)
    try:
        model_config = GPTConfig(**loaded.manifest["model_config"])
    except TypeError as exc:
        raise CheckpointError(f"model config not understood ({exc})", path=loaded.path) from None
    state = _weights(loaded, config.sample.weights)
    tokenizer = load_tokenizer(loaded.tokenizer_dir, config.prepare.cache_dir)
    gguf_name = f"{request.name}-{request.gguf_type}.gguf"
    notes: list[str] = []

    def write(tmp: Path) -> None:
        if request.format == "hf":
            write_hf(tmp, model_config, state, tokenizer, config.sample)
        else:
            write_gguf(tmp / gguf_name, model_config, state, tokenizer, request.gguf_type, request.name)
        if request.format == "ollama":
            stop = _stop_tokens(tokenizer)
            (tmp / "Modelfile").write_text(modelfile(gguf_name, config.sample, stop, model_config.block_size), "utf-8")
        if write_hook is not None:
            write_hook(tmp)

    try:
        replace_dir(target, write)
    except OSError as exc:
        raise UserError(f"export failed, nothing written ({exc.strerror or exc})", path=target) from None
    files = sorted(p.name for p in target.iterdir())
    if request.format == "ollama":
        command = ["ollama", "create", request.name, "-f", str(target / "Modelfile")]
        notes.append("create the Ollama model with: " + shlex.join(command))
        if which("ollama") is not None:
            result = (run or _run)(command)
            notes.append(
                f"ollama create exited with {result.returncode}: {(result.stdout + result.stderr).strip()[:500]}"
            )
        else:
            notes.append("no `ollama` binary on PATH here, so it was not run")
    return ExportResult(target, files, loaded.step, notes)


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:  # pragma: no cover (no ollama on the CI machine)
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
