"""The one shape every model family has: build for training, load for inference, export.

Training gets a :class:`TrainingSetup` (the model and what the shared loop, checkpoints and hooks
need from it); inference gets an :class:`InferenceModel` (logits for evaluation, a token stream
for sampling and serving, the tokenizer, stop tokens and chat template). Evaluation needs nothing
more than the logits, so it is shared by all families.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from rich.console import Console
from torch import nn

from ml_playground.core.devices import Precision
from ml_playground.core.errors import ConfigError
from ml_playground.core.logging_protocol import MetricsLogger
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.data_pipeline.batches import TokenDataset
from ml_playground.export.request import ExportRequest, ExportResult
from ml_playground.training.distributed import DistributedContext
from ml_playground.training.ema import EMA

if TYPE_CHECKING:
    from pathlib import Path

    from ml_playground.configuration.families import FamilyConfig
    from ml_playground.configuration.models import ExperimentConfig
    from ml_playground.training.checkpointing.service import CheckpointService
    from ml_playground.training.context import Hook

TokenStream = Callable[[torch.Tensor, SamplingParams], Iterator[torch.Tensor]]
"""(prompt ids (1, T0), params) -> each new token (1, 1) as it is drawn."""

ChatMessages = Sequence[Mapping[str, str]]


class BatchDecoder(Protocol):
    """Streams decoded together, one forward pass per step (continuous batching in ``serve``)."""

    def admits(self, prompt_tokens: int, params: SamplingParams, joining: int = 0) -> bool:
        """Whether a stream with this prompt length and these settings can join now, beside ``joining`` streams
        already taken to be prefilled with it."""
        ...

    def add(self, prompt_ids: list[int], params: SamplingParams) -> tuple[int, int]:
        """Prefill a new stream: (its handle, its first token)."""
        ...

    def add_many(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[tuple[int, int]]:
        """Prefill new streams that arrived together: (handle, first token) each, in order."""
        ...

    def step(self) -> dict[int, int]:
        """The next token of every stream, by handle."""
        ...

    def remove(self, handle: int) -> None:
        """The stream leaves (finished or cancelled)."""
        ...

    def __len__(self) -> int:
        """Streams in the batch."""
        ...


@dataclass(frozen=True)
class BuildContext:
    """What a family gets to build its model for training."""

    config: ExperimentConfig
    dataset: TokenDataset
    precision: Precision
    console: Console
    dist: DistributedContext


@dataclass
class TrainingSetup:
    """What the training wiring needs from a family.

    ``model(x)`` returns logits (evaluation and the loop call it); ``trainable_state`` is what a
    checkpoint stores as ``model.safetensors`` and ``load_trainable`` puts it back on resume;
    ``model_config`` goes into the manifest and must match on resume; ``generate_text`` samples a
    short text during training (``train.sample_during_training``).
    """

    model: nn.Module
    model_config: dict[str, Any]
    summary: str
    trainable_state: Callable[[], dict[str, torch.Tensor]]
    load_trainable: Callable[[Mapping[str, torch.Tensor]], None]
    generate_text: Callable[[str, SamplingParams], str]
    ema: EMA | None = None
    forward: nn.Module | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # (inputs, targets) -> mean loss
    no_sync: Callable[[], contextlib.AbstractContextManager[object]] | None = None
    make_hooks: Callable[[MetricsLogger, CheckpointService], list[Hook]] | None = None


@dataclass(frozen=True)
class InferenceModel:
    """A trained model ready to score and generate, whatever its family."""

    module: nn.Module  # forward(ids (B, T)) -> logits (B, T, V), in eval mode
    tokenizer: Tokenizer
    context_length: int
    stream: TokenStream
    step: int
    checkpoint: str  # what was loaded, for people: a folder, or "base + adapters ..."
    device: torch.device
    stop_ids: frozenset[int] = frozenset()
    stop_in_text: bool = True  # whether a stop token's text ends the sample (a header's <|end|>) or is dropped
    chat_ids: Callable[[ChatMessages], list[int]] | None = None  # None: the model has no chat template
    dataset_fingerprint: str | None = None
    conditions: Mapping[str, Any] | None = None  # a header-conditioned model's known speakers and parties
    batch_decoder: Callable[[int], BatchDecoder] | None = None  # continuous batching for up to N streams


FamilySettings = TypeVar("FamilySettings", bound="FamilyConfig")


def family_settings(config: ExperimentConfig, kind: type[FamilySettings]) -> FamilySettings:
    """``train.model`` as the family's own config class (the registry only sends a family its own kind)."""
    model = config.train.model
    if not isinstance(model, kind):
        raise ConfigError(f"expected the {kind.__name__} family, got kind {model.kind!r}", key="train.model.kind")
    return model


class ModelFamily(Protocol):
    """One model family (``train.model.kind``); registered in ``configuration/families.py``."""

    def build_for_training(self, ctx: BuildContext) -> TrainingSetup:
        """The model (and its checkpointable parts) for the shared training loop."""
        ...

    def load_for_inference(self, config: ExperimentConfig, checkpoint: str) -> InferenceModel:
        """``checkpoint``: ``best``, ``last`` or a folder (what ``sample.checkpoint`` says)."""
        ...

    def export(
        self, config: ExperimentConfig, request: ExportRequest, write_hook: Callable[[Path], None] | None = None
    ) -> ExportResult:
        """Write the export into ``request.out_dir`` as a whole or not at all."""
        ...
