"""Adding a model family is one config class, one implementation and one registry line.

A third family, defined here (a bigram table: the logits of the next token depend on the current
token only), goes through train, sample, eval and export without any of them knowing it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest
import torch
from rich.console import Console
from torch import nn

from ml_playground.commands.export import run_export
from ml_playground.commands.train import train
from ml_playground.configuration.families import FamilyConfig, register_family, unregister_family
from ml_playground.configuration.loading import experiment_config_path, load_config
from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.atomic import replace_dir
from ml_playground.core.errors import ConfigError
from ml_playground.core.sampling_rules import SamplingParams, next_token
from ml_playground.core.tokenizer import load_tokenizer
from ml_playground.data_pipeline.meta import TOKENIZER_DIR
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.evaluation.runner import evaluate_checkpoint
from ml_playground.export.request import ExportRequest, ExportResult
from ml_playground.families.base import BuildContext, InferenceModel, TrainingSetup
from ml_playground.families.registry import family_of
from ml_playground.sampling.runner import sample
from ml_playground.training.checkpointing.service import CheckpointService
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.integration


class BigramConfig(FamilyConfig):
    kind: Literal["bigram"] = "bigram"  # pyright: ignore[reportIncompatibleVariableOverride]
    block_size: int = 16

    @property
    def sequence_length(self) -> int:
        return self.block_size


class Bigram(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.table(idx)
        return logits


def bigram_stream(model: Bigram) -> Callable[[torch.Tensor, SamplingParams], Iterator[torch.Tensor]]:
    def stream(prompt: torch.Tensor, params: SamplingParams) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(params.seed)
        last = prompt[:, -1:]
        with torch.inference_mode():
            for _ in range(params.max_new_tokens):
                last = next_token(model(last)[:, -1, :], params, generator)
                yield last

    return stream


class BigramFamily:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def build_for_training(self, ctx: BuildContext) -> TrainingSetup:
        self.calls.append("build_for_training")
        model = Bigram(ctx.dataset.vocab_size)
        tokenizer = load_tokenizer(ctx.dataset.dataset_dir / TOKENIZER_DIR)

        def generate_text(prompt: str, params: SamplingParams) -> str:
            ids = torch.tensor([tokenizer.encode(prompt)])
            return prompt + tokenizer.decode([int(t) for t in bigram_stream(model)(ids, params)])

        return TrainingSetup(
            model=model,
            model_config={"kind": "bigram", "vocab_size": ctx.dataset.vocab_size},
            summary="a bigram table",
            trainable_state=model.state_dict,
            load_trainable=lambda state: model.load_state_dict(state) and None,
            generate_text=generate_text,
        )

    def load_for_inference(self, config: ExperimentConfig, checkpoint: str) -> InferenceModel:
        self.calls.append("load_for_inference")
        service = CheckpointService(config.train.out_dir)
        loaded = service.load(service.resolve(checkpoint), with_training_state=False)
        model = Bigram(int(loaded.manifest["model_config"]["vocab_size"]))
        model.load_state_dict(loaded.model)
        return InferenceModel(
            module=model.eval(),
            tokenizer=load_tokenizer(loaded.tokenizer_dir),
            context_length=config.train.sequence_length,
            stream=bigram_stream(model),
            step=loaded.step,
            checkpoint=str(loaded.path),
            device=torch.device("cpu"),
        )

    def export(
        self, config: ExperimentConfig, request: ExportRequest, write_hook: Callable[[Path], None] | None = None
    ) -> ExportResult:
        self.calls.append("export")
        model = self.load_for_inference(config, request.checkpoint)
        table = model.module.state_dict()["table.weight"]
        replace_dir(request.out_dir, lambda tmp: (tmp / "bigram.json").write_text(json.dumps(table.tolist())))
        return ExportResult(request.out_dir, ["bigram.json"], model.step)


@pytest.fixture
def bigram() -> Iterator[BigramFamily]:
    family = BigramFamily()
    register_family("bigram", BigramConfig, family)  # the one registry line
    yield family
    unregister_family("bigram")


def test_a_third_family_trains_samples_evaluates_and_exports(
    bigram: BigramFamily, tmp_path: Path, shakespeare_slice: Path
) -> None:
    config = load_config(
        experiment_config_path("shakespeare"),
        [
            *tiny_overrides(tmp_path, shakespeare_slice)[:4],
            "train.model={kind='bigram', block_size=16}",
            "train.max_iters=30",
            "train.eval_interval=15",
            "train.optim.learning_rate=0.1",
            "train.schedule.warmup_iters=0",
            "train.sample_during_training.every_evals=1",
            "train.sample_during_training.max_new_tokens=5",
        ],
    )
    assert isinstance(config.train.model, BigramConfig)
    assert family_of(config) is bigram
    prepare(config.prepare)
    console = Console(file=io.StringIO(), width=200)
    result = train(config, console=console)
    assert result.step == 30
    assert result.best_val_loss is not None
    assert result.best_val_loss < 3.5
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "a bigram table" in shown
    # train.sample_during_training, through the family's generate_text
    assert "--- sample at step 15 ---" in shown
    assert "--- sample at step 30 ---" in shown

    texts: list[str] = []
    samples = sample(config.model_copy(update={"sample": config.sample.model_copy(update={"max_new_tokens": 20})}),
                     emit=texts.append)  # fmt: skip
    assert len(samples) == 1
    assert samples[0].text.startswith(config.sample.prompt)
    assert len(samples[0].text) == len(config.sample.prompt) + 20  # characters: one per token

    report = evaluate_checkpoint(config)
    assert report.val_loss == pytest.approx(result.best_val_loss, rel=1e-4)
    assert report.bits_per_byte is not None  # char model on ASCII text: loss / ln 2
    assert report.bits_per_byte == pytest.approx(report.val_loss / 0.6931471805599453, rel=1e-3)

    exported = run_export(config, ExportRequest(format="hf", out_dir=tmp_path / "exported", checkpoint="best"))
    assert json.loads((exported.out_dir / "bigram.json").read_text())[0][:3]
    assert bigram.calls == ["build_for_training", "load_for_inference", "load_for_inference", "export",
                            "load_for_inference"]  # fmt: skip


def test_keys_of_another_family_are_unknown_keys(bigram: BigramFamily) -> None:
    shakespeare = experiment_config_path("shakespeare")
    with pytest.raises(ConfigError, match=r"shakespeare/config\.toml: train\.model\.compile: unknown key \(and 5 more"):
        load_config(shakespeare, ["train.model.kind='bigram'"])
    with pytest.raises(ConfigError, match=r"train\.model: unknown model family 'trigram'; known: 'gpt', 'hf_lora'"):
        load_config(shakespeare, ["train.model.kind='trigram'"])
