"""``kind = "hf_lora"``: a pretrained Hugging Face causal LM with LoRA adapters (this folder).

Only the adapters train and go into checkpoints; inference loads base + adapters (or the merged
model); sampling uses the model's own KV cache with our sampling rules; the chat template is the
tokenizer's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ml_playground.configuration.models import ExperimentConfig, HfLoraModelConfig
from ml_playground.export.request import ExportRequest, ExportResult
from ml_playground.families.base import BuildContext, InferenceModel, TrainingSetup, family_settings


class HfLoraFamily:
    def build_for_training(self, ctx: BuildContext) -> TrainingSetup:
        from ml_playground.families.hf_lora.setup import finetune_setup

        return finetune_setup(ctx)

    def load_for_inference(self, config: ExperimentConfig, checkpoint: str) -> InferenceModel:
        from ml_playground.families.hf_lora.inference import lora_inference_model

        return lora_inference_model(config, family_settings(config, HfLoraModelConfig), checkpoint)

    def export(
        self, config: ExperimentConfig, request: ExportRequest, write_hook: Callable[[Path], None] | None = None
    ) -> ExportResult:
        from ml_playground.families.hf_lora.export import export_lora

        return export_lora(config, request, write_hook)


FAMILY = HfLoraFamily()
