"""Fine-tuning paths off the main road: base model without adapters, adapter folders by path, wrong datasets."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from ml_playground.commands.train import train
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.devices import Precision
from ml_playground.core.errors import CheckpointError, ConfigError, DataError, UserError
from ml_playground.data_pipeline.batches import open_dataset
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.families.base import BuildContext
from ml_playground.families.hf_lora.setup import finetune_setup, model_shape
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm
from ml_playground.sampling.runner import sample
from ml_playground.training.distributed import DistributedContext
from tests.integration.test_finetune import EXPERIMENT, overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    text = (shared_data / "bundestag" / "19009.txt").read_text("utf-8-sig")
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "qwen2", [text])


def config_for(root: Path, tiny_model: Path, shared_data: Path, *extra: str) -> ExperimentConfig:
    settings = [*overrides(root, tiny_model, shared_data), "train.max_iters=4", "train.eval_interval=2", *extra]
    return load_config(experiment_config_path(EXPERIMENT), settings)


def quiet() -> Console:
    return Console(file=io.StringIO())


def test_gradient_checkpointing_run_and_samples_by_path_or_from_the_bare_base(
    tmp_path: Path, tiny_model: Path, shared_data: Path
) -> None:
    config = config_for(tmp_path, tiny_model, shared_data, "train.model.gradient_checkpointing=true")
    prepare(config.prepare)
    result = train(config, quiet=True, console=quiet())
    assert result.step == 4
    by_path = config.sample.model_copy(update={"checkpoint": str(tmp_path / "run" / "adapters" / "last")})
    assert sample(config.model_copy(update={"sample": by_path}), emit=lambda _: None)
    with pytest.raises(CheckpointError, match="no merged model yet"):
        sample(
            config.model_copy(update={"sample": config.sample.model_copy(update={"checkpoint": "merged"})}), emit=print
        )
    bare = config.sample.model_copy(update={"require_adapters": False, "checkpoint": str(tmp_path / "nothing")})
    assert sample(config.model_copy(update={"sample": bare}), emit=lambda _: None)
    with pytest.raises(ConfigError, match="prompt is empty"):
        sample(config.model_copy(update={"sample": config.sample.model_copy(update={"prompt": ""})}), emit=print)


def test_compile_true_trains_through_compiled_layers(tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    """This PyTorch compiles on the CPU, so Dynamo must have compiled graphs for the run; the loss and
    gradients against eager and the fallback are in tests/unit/families/hf_lora/test_compiled_layers.py."""
    from torch._dynamo.utils import counters

    config = config_for(tmp_path, tiny_model, shared_data, "train.model.compile=true", "train.max_iters=2")
    prepare(config.prepare)
    compiled_before = counters["stats"]["unique_graphs"]
    console = quiet()
    assert train(config, quiet=True, console=console).step == 2
    assert counters["stats"]["unique_graphs"] > compiled_before
    printed = console.file.getvalue()  # type: ignore[attr-defined]
    assert "torch.compile: the decoder layers, for training steps" in printed
    assert "not available" not in printed


def test_datasets_that_do_not_fit_the_base_model_are_refused(
    tmp_path: Path, tiny_model: Path, shared_data: Path
) -> None:
    char = config_for(tmp_path / "char", tiny_model, shared_data)
    prepare(char.prepare.model_copy(update={"tokenizer": "char", "template": None}))
    with pytest.raises(DataError, match="prepared with a char tokenizer"):
        train(char, quiet=True, console=quiet())
    text = (shared_data / "bundestag" / "19001.txt").read_text("utf-8-sig")
    bigger = build_tiny_causal_lm(tmp_path / "bigger", [text], vocab_size=700)
    mismatched = config_for(tmp_path / "mismatch", tiny_model, shared_data)
    prepare(mismatched.prepare.model_copy(update={"hf_tokenizer": str(bigger)}))
    with pytest.raises(DataError, match="700 tokens, the base model only 512 embeddings"):
        train(mismatched, quiet=True, console=quiet())


def test_setup_refuses_torchrun_and_models_without_a_shape(tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    config = config_for(tmp_path, tiny_model, shared_data)
    prepare(config.prepare)
    dataset = open_dataset(config.prepare.dataset_dir)
    precision = Precision(torch.device("cpu"), torch.float32)
    with pytest.raises(UserError, match="runs in one process"):
        finetune_setup(BuildContext(config, dataset, precision, quiet(), DistributedContext(rank=0, world_size=2)))
    with pytest.raises(UserError, match="none of"):
        model_shape(torch.nn.Linear(2, 2), 6, 6)


def test_a_checkpoint_from_another_lora_shape_is_refused_on_resume(
    tmp_path: Path, tiny_model: Path, shared_data: Path
) -> None:
    config = config_for(tmp_path, tiny_model, shared_data)
    prepare(config.prepare)
    train(config, quiet=True, console=quiet())
    lora = config.train.model.lora  # type: ignore[attr-defined]
    bigger_rank = config.train.model_copy(
        update={
            "max_iters": 6,
            "model": config.train.model.model_copy(update={"lora": lora.model_copy(update={"r": 4})}),
        }
    )
    with pytest.raises(CheckpointError, match="r: 8 in checkpoint, 4 now"):
        train(config.model_copy(update={"train": bigger_rank}), quiet=True, console=quiet())
    manifest = json.loads(next((tmp_path / "run" / "checkpoints").glob("step_*/manifest.json")).read_text())
    assert manifest["model_config"]["base_model"] == str(tiny_model)
