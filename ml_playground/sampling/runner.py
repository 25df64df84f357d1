"""Turn a checkpoint and a prompt into text: stream it to the terminal, save each sample."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import torch

from ml_playground.configuration.models import ExperimentConfig, SampleConfig
from ml_playground.core.atomic import atomic_write_text
from ml_playground.core.errors import ConfigError, UserError
from ml_playground.core.sampling_rules import ContrastPrompt, SamplingParams
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.families.base import InferenceModel
from ml_playground.families.gpt.model import GPT
from ml_playground.families.registry import family_of
from ml_playground.sampling.conditioning import (
    header_in_view,
    model_conditions,
    party_contrast,
    refuse_unconditioned,
    sample_fields,
)
from ml_playground.sampling.decoding import TextStream


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
    model: InferenceModel,
    prompt_ids: list[int],
    params: SamplingParams,
    emit: Callable[[str], None],
    stop_ids: Collection[int] | None = None,
) -> str:
    """Generate and emit text as it grows (``TextStream`` holds back incomplete characters).

    Generation ends early at any of ``stop_ids`` (default: the model's own); the stop token's text is
    part of the result where the family says so (a header-conditioned GPT's ``<|end|>``), not otherwise
    (a pretrained model's end-of-text)."""
    return decode_sample(model, prompt_ids, params, emit, stop_ids)[0]


def decode_sample(
    model: InferenceModel,
    prompt_ids: list[int],
    params: SamplingParams,
    emit: Callable[[str], None] = lambda _: None,
    stop_ids: Collection[int] | None = None,
) -> tuple[str, bool]:
    """``stream_decode``, and whether the text ended at a stop token (rather than at ``max_new_tokens``)."""
    stops = model.stop_ids if stop_ids is None else stop_ids
    text = TextStream(model.tokenizer, stops, model.stop_in_text)
    prompt = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
    for token in model.stream(prompt, params):
        if delta := text.push(int(token[0, 0])):
            emit(delta)
        if text.finish_reason is not None:
            break
    stopped = text.finish_reason == "stop"
    if rest := text.finish():
        emit(rest)
    return text.text, stopped


def sampling_params(
    sc: SampleConfig,
    index: int = 0,
    max_new_tokens: int | None = None,
    keep_prefix: int = 0,
    contrast: tuple[ContrastPrompt, ...] = (),
) -> SamplingParams:
    """The sample section's settings for sample number ``index`` (seed + index); guidance where ``contrast`` is."""
    return SamplingParams(
        guidance=sc.guidance,
        contrast=contrast,
        keep_prefix=keep_prefix,
        max_new_tokens=max_new_tokens or sc.max_new_tokens,
        temperature=sc.temperature,
        top_k=sc.top_k,
        top_p=sc.top_p,
        repetition_penalty=sc.repetition_penalty,
        seed=sc.seed + index,
        use_kv_cache=sc.use_kv_cache,
    )


def load_model(config: ExperimentConfig, checkpoint: str | None = None) -> InferenceModel:
    """The experiment's trained model from its family (``checkpoint`` defaults to ``sample.checkpoint``)."""
    if config.train.num_threads is not None:  # the same threads as training: the same sums, the same tokens
        torch.set_num_threads(config.train.num_threads)
    return family_of(config).load_for_inference(config, checkpoint or config.sample.checkpoint)


@dataclass(frozen=True)
class Generator:
    """A from-scratch GPT ready to generate (debate and analyze work on header-conditioned GPTs)."""

    inference: InferenceModel

    @property
    def model(self) -> GPT:
        """The GPT module, for callers that need our own model (export checks); other families are refused."""
        module = self.inference.module
        if not isinstance(module, GPT):
            raise UserError(f"this needs a train.model.kind = 'gpt' experiment ({self.inference.checkpoint})")
        return module

    @property
    def tokenizer(self) -> Tokenizer:
        return self.inference.tokenizer

    @property
    def step(self) -> int:
        return self.inference.step

    @property
    def checkpoint(self) -> str:
        return self.inference.checkpoint

    def params(
        self,
        sc: SampleConfig,
        index: int = 0,
        max_new_tokens: int | None = None,
        keep_prefix: int = 0,
        contrast: tuple[ContrastPrompt, ...] = (),
    ) -> SamplingParams:
        return sampling_params(sc, index, max_new_tokens, keep_prefix, contrast)


def load_generator(config: ExperimentConfig) -> Generator:
    return Generator(load_model(config))


def prompt_ids_for(config: ExperimentConfig, model: InferenceModel, prompt_text: str) -> tuple[str, list[int], int]:
    """(the prompt as shown, its ids, how many of them stay in view): chat template, header, or plain text."""
    sc = config.sample
    keep_prefix = 0
    if sc.chat:
        if model.chat_ids is None:
            raise ConfigError("the model has no chat template; set sample.chat = false", key="sample.chat")
        return prompt_text, model.chat_ids(chat_messages(sc.system, prompt_text)), 0
    conditions = model_conditions(model, config.prepare.dataset_dir)
    refuse_unconditioned(conditions, sample_fields(sc), sc.guidance)
    if conditions is not None:
        header, keep_prefix = header_in_view(model.tokenizer, sample_fields(sc), conditions)
        prompt_text = header + prompt_text.strip()
    try:
        ids = model.tokenizer.encode(prompt_text)
    except UserError as exc:
        raise ConfigError(f"prompt cannot be encoded: {exc.message}", key="sample.prompt") from None
    return prompt_text, ids, keep_prefix


def chat_messages(system: str | None, user_text: str) -> list[dict[str, str]]:
    """The user's text as a chat, after ``system`` when there is one."""
    return [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": user_text}]


def guidance_contrast(config: ExperimentConfig, model: InferenceModel, prompt_text: str) -> tuple[ContrastPrompt, ...]:
    """``sample.guidance`` on a header-conditioned model asked for a party: the prompt under every known party."""
    if config.sample.guidance <= 0 or config.sample.chat:
        return ()
    conditions = model_conditions(model, config.prepare.dataset_dir)
    if conditions is None:
        return ()
    parties = list(conditions.get("parties", {}))
    return party_contrast(model.tokenizer, sample_fields(config.sample), parties, prompt_text.strip())


def sample(config: ExperimentConfig, *, emit: Callable[[str], None]) -> list[Sample]:
    sc = config.sample
    model = load_model(config)
    asked = read_prompt(config)
    prompt_text, prompt_ids, keep_prefix = prompt_ids_for(config, model, asked)
    if not prompt_ids:
        raise ConfigError("prompt is empty after tokenization; give at least one token", key="sample.prompt")
    contrast = guidance_contrast(config, model, asked)
    samples_dir = config.train.out_dir / "samples"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    samples = []
    for index in range(sc.num_samples):
        emit(prompt_text)
        params = sampling_params(sc, index, keep_prefix=keep_prefix, contrast=contrast)
        text = prompt_text + stream_decode(model, prompt_ids, params, emit)
        emit("\n---------------\n")
        path = samples_dir / f"sample-{stamp}-step{model.step}-{index}.txt"
        atomic_write_text(path, text)
        samples.append(Sample(text, path))
    return samples
