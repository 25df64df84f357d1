"""Turn a checkpoint and a prompt into text: stream it to the terminal, save each sample."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import torch

from ml_playground.configuration.models import ExperimentConfig, SampleConfig
from ml_playground.core.atomic import atomic_write_text
from ml_playground.core.devices import resolve_device
from ml_playground.core.errors import ConfigError, UserError
from ml_playground.core.tokenizer import load_tokenizer
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.models.core.inference import SamplingParams, generate_stream
from ml_playground.models.core.loading import model_from_checkpoint
from ml_playground.models.core.model import GPT
from ml_playground.sampling.conditioning import conditioned_prompt, dataset_conditions
from ml_playground.training.checkpointing.service import CheckpointService


@dataclass(frozen=True)
class Sample:
    text: str
    path: Path


def read_prompt(config: ExperimentConfig) -> str:
    if config.sample.prompt_file is None:
        return config.sample.prompt
    try:
        return config.sample.prompt_file.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read prompt file ({exc})", key="sample.prompt_file", path=config.sample.prompt_file
        ) from None


def stream_decode(
    tokenizer: Tokenizer,
    model: GPT,
    prompt_ids: list[int],
    params: SamplingParams,
    emit: Callable[[str], None],
    stop_ids: Collection[int] = (),
) -> str:
    """Generate and emit text as it grows; held back while the tail is an incomplete UTF-8 sequence.

    Generation ends early at any of ``stop_ids`` (included in the text)."""
    device = next(model.parameters()).device
    prompt = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    new_ids: list[int] = []
    shown = ""
    for token in generate_stream(model, prompt, params):
        new_ids.append(int(token[0, 0]))
        text = tokenizer.decode(new_ids)
        if not text.endswith("\ufffd") and text.startswith(shown):
            emit(text[len(shown) :])
            shown = text
        if new_ids[-1] in stop_ids:
            break
    final = tokenizer.decode(new_ids)
    if final.startswith(shown):
        emit(final[len(shown) :])
    return final


def header_stop_ids(tokenizer: Tokenizer) -> set[int]:
    """Ids of the header markers: a speech ends at ``<|end|>``, or where the model starts a new header."""
    from ml_playground.core.tokenizer import BpeTokenizer
    from ml_playground.data_pipeline.header import SPECIAL_TOKENS

    if not isinstance(tokenizer, BpeTokenizer):
        return set()
    return {i for token in SPECIAL_TOKENS if (i := tokenizer.token_id(token)) is not None}


@dataclass(frozen=True)
class Generator:
    """A from-scratch checkpoint ready to generate: model, tokenizer, the step it was saved at and its folder."""

    model: GPT
    tokenizer: Tokenizer
    step: int
    checkpoint: str = ""

    def params(
        self, sc: SampleConfig, index: int = 0, max_new_tokens: int | None = None, keep_prefix: int = 0
    ) -> SamplingParams:
        return SamplingParams(
            keep_prefix=keep_prefix,
            max_new_tokens=max_new_tokens or sc.max_new_tokens,
            temperature=sc.temperature,
            top_k=sc.top_k,
            top_p=sc.top_p,
            seed=sc.seed + index,
            use_kv_cache=sc.use_kv_cache,
        )


def load_generator(config: ExperimentConfig) -> Generator:
    service = CheckpointService(config.train.out_dir)
    loaded = service.load(service.resolve(config.sample.checkpoint), with_training_state=False)
    tokenizer = load_tokenizer(loaded.tokenizer_dir, config.prepare.cache_dir)
    model = model_from_checkpoint(
        loaded, resolve_device(config.train.device), config.sample.weights, config.train.linear_kernel
    )
    return Generator(model, tokenizer, loaded.step, str(loaded.path))


def sample(config: ExperimentConfig, *, emit: Callable[[str], None]) -> list[Sample]:
    sc = config.sample
    if config.train.base_model is not None:
        from ml_playground.finetune.sampling import sample_finetuned

        return [Sample(text, path) for text, path in sample_finetuned(config, read_prompt(config), emit)]
    generator = load_generator(config)
    model, tokenizer = generator.model, generator.tokenizer
    prompt_text = read_prompt(config)
    stop_ids: set[int] = set()
    keep_prefix = 0
    conditions = dataset_conditions(config.prepare.dataset_dir)
    if conditions is not None:
        fields = {"speaker": sc.speaker, "party": sc.party, "year": sc.year, "topic": sc.topic}
        prompt_text = conditioned_prompt(fields, conditions, prompt_text.strip())
        keep_prefix = len(tokenizer.encode(conditioned_prompt(fields, conditions)))  # the header stays in view
        stop_ids = header_stop_ids(tokenizer)
    try:
        prompt_ids = tokenizer.encode(prompt_text)
    except UserError as exc:
        raise ConfigError(f"prompt cannot be encoded: {exc.message}", key="sample.prompt") from None
    if not prompt_ids:
        raise ConfigError("prompt is empty after tokenization; give at least one token", key="sample.prompt")
    samples_dir = config.train.out_dir / "samples"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    samples = []
    for index in range(sc.num_samples):
        emit(prompt_text)
        text = prompt_text + stream_decode(
            tokenizer, model, prompt_ids, generator.params(sc, index, keep_prefix=keep_prefix), emit, stop_ids
        )
        emit("\n---------------\n")
        path = samples_dir / f"sample-{stamp}-step{generator.step}-{index}.txt"
        atomic_write_text(path, text)
        samples.append(Sample(text, path))
    return samples
