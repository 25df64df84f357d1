"""A fine-tuned model for inference: base + adapters (``adapters/best|last`` or a folder), or ``merged``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ml_playground.configuration.models import ExperimentConfig, HfLoraModelConfig
from ml_playground.core.batch_rows import RowBatch
from ml_playground.core.devices import resolve_precision
from ml_playground.core.errors import CheckpointError
from ml_playground.core.gguf_import import hf_folder_for
from ml_playground.core.packed_products import Product, linear_layers
from ml_playground.core.row_products import RowProducts, measured_blocks
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.core.tokenizer import PretrainedTokenizer
from ml_playground.families.base import ChatMessages, InferenceModel
from ml_playground.families.hf_lora.adapters import ADAPTERS_DIR, MERGED_DIR, check_adapters_match
from ml_playground.families.hf_lora.batched import HfBatchedDecoder
from ml_playground.families.hf_lora.chat import apply_text_format, stop_ids
from ml_playground.families.hf_lora.decode import LlamaDecoder, LlamaWeights, agrees, stream_rows
from ml_playground.families.hf_lora.generation import stream_tokens
from ml_playground.families.hf_lora.hub import load_pretrained_model, load_pretrained_tokenizer
from ml_playground.families.hf_lora.lora import load_adapters, merged
from ml_playground.families.hf_lora.modules import LogitsOnly
from ml_playground.training.checkpointing.service import CheckpointService

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def resolve_weights(config: ExperimentConfig, which: str) -> tuple[str, Path | None]:
    """('merged', folder) | ('adapters', folder) | ('base', None), refusing a bare base when adapters are required."""
    out = config.train.out_dir
    if which == "merged":
        folder = out / MERGED_DIR
        if not (folder / "config.json").is_file():
            raise CheckpointError(
                "no merged model yet (train with train.model.save_merged_on_best = true)", path=folder
            )
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


def chat_encoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[ChatMessages], list[int]] | None:
    """``messages -> ids`` through the tokenizer's chat template (with the generation prompt), or None."""
    if not getattr(tokenizer, "chat_template", None):
        return None

    def encode(messages: ChatMessages) -> list[int]:
        encoded: Any = tokenizer.apply_chat_template(
            [dict(m) for m in messages], add_generation_prompt=True, tokenize=True
        )  # a list of ids, or (transformers 5) a BatchEncoding holding them
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return [int(i) for i in ids]

    return encode


def load_lora_model(
    config: ExperimentConfig, settings: HfLoraModelConfig, which: str
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase, str]:
    """(model in eval mode, tokenizer, a description of what was loaded)."""
    precision = resolve_precision(config.train.device, config.train.dtype)
    kind, folder = resolve_weights(config, which)
    cache = config.prepare.cache_dir
    model: PreTrainedModel | PeftModel
    if kind == "merged":
        assert folder is not None
        model = load_pretrained_model(str(folder), revision=None, dtype=precision.weight_dtype, key="sample.checkpoint")
        tokenizer = load_pretrained_tokenizer(str(folder), key="sample.checkpoint")
        described = f"merged model {folder}"
    else:
        key = "train.model.base_model"
        model = load_pretrained_model(
            settings.base_model, revision=settings.revision, dtype=precision.weight_dtype, key=key, cache_dir=cache
        )
        if kind == "adapters":
            assert folder is not None
            check_adapters_match(folder, settings.base_model, hf_folder_for(settings.base_model, cache, key))
            model = load_adapters(model, folder)
            tokenizer = load_pretrained_tokenizer(str(folder), key="sample.checkpoint")
            described = f"{settings.base_model} + adapters {folder}"
        else:
            tokenizer = load_pretrained_tokenizer(settings.base_model, settings.revision, key=key, cache_dir=cache)
            described = f"{settings.base_model} without adapters"
    if kind == "adapters":  # the run's record decides the template: its own, or none for plain text
        apply_text_format(tokenizer, checkpoint_record(config, which, "text_format"))
    nn.Module.to(model, precision.device)  # transformers wraps .to in a decorator its stubs type oddly
    model.eval()
    return model, tokenizer, described


def checkpoint_record(config: ExperimentConfig, which: str, key: str) -> dict[str, Any] | None:
    """What a run recorded under ``key`` in its checkpoint's manifest (None: no checkpoint, or not recorded)."""
    if which not in ("best", "last"):
        return None
    service = CheckpointService(config.train.out_dir)
    try:
        manifest = json.loads((service.resolve(which) / "manifest.json").read_text("utf-8"))
    except (CheckpointError, OSError, ValueError):
        return None
    record = manifest.get(key)
    return record if isinstance(record, dict) else None


def checkpoint_conditions(config: ExperimentConfig, which: str) -> dict[str, Any] | None:
    """The conditions a header-conditioned run recorded in its checkpoint's manifest (None: unconditioned)."""
    return checkpoint_record(config, which, "conditions")


def context_length(model: nn.Module, block_size: int) -> int:
    """The base model's own context (``max_position_embeddings``), not the training block size."""
    config = getattr(model, "config", None)
    length = getattr(config, "max_position_embeddings", None)
    return int(length) if isinstance(length, int) and length > 0 else block_size


def lora_inference_model(config: ExperimentConfig, settings: HfLoraModelConfig, which: str) -> InferenceModel:
    loaded, tokenizer, described = load_lora_model(config, settings, which)
    model = merged(loaded)  # the adapters folded in: what export writes, and faster to decode
    pointer = CheckpointService(config.train.out_dir).pointer_info(which) if which in ("best", "last") else None
    decoding = Decoding.of(model, context_length(model, settings.block_size))
    return InferenceModel(
        module=LogitsOnly(model),
        tokenizer=PretrainedTokenizer(tokenizer, described),
        context_length=decoding.context,
        stream=decoding.stream,
        step=int(pointer["step"]) if pointer is not None else -1,
        checkpoint=described,
        device=next(model.parameters()).device,
        stop_ids=stop_ids(tokenizer),
        stop_in_text=False,
        chat_ids=chat_encoder(tokenizer),
        conditions=checkpoint_conditions(config, which),
        batch_decoder=decoding.decoder if decoding.batches else None,
    )


@dataclass(frozen=True)
class Decoding:
    """How a model decodes: without its module calls where it is Llama-shaped (``decode.py``, checked at start-up),
    one stream as a batch of one row; else through its own forward, several streams with a shared cache
    (``batched.py``) where its cache allows, one stream token by token (``generation.py``). One row by each
    weight runs in blocks where this machine measured that faster (``core/row_products.py``)."""

    model: nn.Module
    context: int
    one_row: RowProducts
    lean: LlamaWeights | None
    batches: bool

    @staticmethod
    def of(
        model: nn.Module,
        context: int,
        check: Callable[[LlamaWeights, Product], bool] = agrees,
        blocks: Callable[[list[torch.Tensor]], Mapping[int, int]] = measured_blocks,
    ) -> Decoding:
        """``check``: whether the lean step computes this model (default: measured on two tokens); ``blocks``: how
        many row blocks one or two rows by these weights run in, by rows (default: measured on this machine, cached)."""
        llama = LlamaWeights.of(model)
        if llama is not None:
            fused = llama.matrices()
            lean_row = RowProducts(fused, blocks(fused))
            if check(llama, lean_row):
                return Decoding(model, context, lean_row, llama, batches=True)
        # The model's own forward multiplies by its layers' weights, not the fused ones: blocks are made for those.
        weights = [layer.weight for layer in linear_layers(model)]
        one_row = RowProducts(weights, blocks(weights))
        return Decoding(model, context, one_row, None, batches=HfBatchedDecoder.applies(model))

    def decoder(self, rows: int) -> RowBatch:
        """A batch decoder of ``rows`` streams."""
        if self.lean is not None:
            return LlamaDecoder(self.lean, rows, self.context, plain=self.one_row)
        return HfBatchedDecoder(self.model, rows, self.context, plain=self.one_row)

    def stream(self, prompt: torch.Tensor, params: SamplingParams) -> Iterator[torch.Tensor]:
        """One prompt's new tokens (1, 1) each: as a batch of one row on the lean path where it takes the stream,
        else token by token through the model's own forward (guidance, a window that slides, no cache)."""
        if self.lean is not None and prompt.size(0) == 1:
            decoder = self.decoder(1)
            if decoder.admits(prompt.size(1), params):
                return stream_rows(decoder, prompt, params)
        product = self.one_row if self.one_row.weights else None
        return stream_tokens(self.model, prompt, params, product)
