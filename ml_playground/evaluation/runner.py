"""``eval``: the loss of a checkpoint over the whole validation split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.devices import resolve_precision
from ml_playground.core.errors import CheckpointError
from ml_playground.data_pipeline.batches import open_dataset
from ml_playground.models.core.loading import model_from_checkpoint
from ml_playground.training.checkpointing.service import CheckpointService
from ml_playground.training.evaluation import evaluate_split


@dataclass(frozen=True)
class EvalReport:
    val_loss: float
    tokens: int
    checkpoint: str
    step: int

    def to_dict(self) -> dict[str, Any]:
        return {"val_loss": self.val_loss, "tokens": self.tokens, "checkpoint": self.checkpoint, "step": self.step}


def evaluate_checkpoint(config: ExperimentConfig) -> EvalReport:
    if config.train.base_model is not None:
        return _evaluate_finetuned(config)
    service = CheckpointService(config.train.out_dir)
    loaded = service.load(service.resolve(config.sample.checkpoint), with_training_state=False)
    dataset = open_dataset(config.prepare.dataset_dir)
    saved_fingerprint = loaded.manifest.get("dataset_fingerprint")
    if saved_fingerprint is not None and saved_fingerprint != dataset.meta.get("fingerprint"):
        raise CheckpointError(
            f"was trained on another dataset than {config.prepare.dataset_dir}; evaluate it against its own data",
            path=loaded.path,
        )
    precision = resolve_precision(config.train.device, config.train.dtype)
    model = model_from_checkpoint(loaded, precision.device, config.sample.weights, config.train.linear_kernel)
    result = evaluate_split(
        model,
        dataset.val,
        block_size=model.config.block_size,
        precision=precision,
        mask=dataset.val_mask,
        index=dataset.val_index,
    )
    return EvalReport(result.loss, result.tokens, str(loaded.path), loaded.step)


def _evaluate_finetuned(config: ExperimentConfig) -> EvalReport:
    """Base + adapters (or the merged model) named by ``sample.checkpoint``, on the masked validation split."""
    from ml_playground.finetune.sampling import load_for_sampling
    from ml_playground.finetune.setup import LogitsOnly

    dataset = open_dataset(config.prepare.dataset_dir)
    precision = resolve_precision(config.train.device, config.train.dtype)
    model, _, described = load_for_sampling(config)
    result = evaluate_split(
        LogitsOnly(model),
        dataset.val,
        block_size=config.train.sequence_length,
        precision=precision,
        mask=dataset.val_mask,
        index=dataset.val_index,
    )
    pointer = CheckpointService(config.train.out_dir).pointer_info(config.sample.checkpoint)
    step = int(pointer["step"]) if pointer is not None else -1
    return EvalReport(result.loss, result.tokens, described, step)
