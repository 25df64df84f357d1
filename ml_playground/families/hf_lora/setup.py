"""A pretrained Hugging Face causal LM with LoRA adapters, set up for our training loop.

The loop, hooks, logging, checkpointing and resume are the from-scratch ones; what differs is
here: the base model and tokenizer come from ``transformers`` (``train.model.base_model``), only the
LoRA weights train and go into checkpoints, a memory estimate is printed (and checked against
the device) before training, and after each checkpoint the adapters are written in PEFT's
format under ``out_dir/adapters/``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from ml_playground.configuration.models import HfLoraModelConfig
from ml_playground.core.console import say
from ml_playground.core.devices import Precision
from ml_playground.core.errors import DataError, UserError
from ml_playground.core.linear_kernels import LinearKernel, LinearKernelSetting
from ml_playground.core.logging_protocol import MetricsLogger
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.core.tokenizer import PretrainedTokenizer, load_tokenizer
from ml_playground.data_pipeline.meta import TOKENIZER_DIR, text_format
from ml_playground.families.base import BuildContext, TrainingSetup, family_settings
from ml_playground.families.hf_lora import frozen_products
from ml_playground.families.hf_lora.adapters import AdapterExportHook
from ml_playground.families.hf_lora.chat import apply_text_format
from ml_playground.families.hf_lora.compiled_layers import compile_layers_for_training
from ml_playground.families.hf_lora.generation import generate_ids
from ml_playground.families.hf_lora.hub import load_pretrained_model
from ml_playground.families.hf_lora.lora import apply_lora, load_adapters, parameter_counts
from ml_playground.families.hf_lora.modules import LogitsOnly, target_loss
from ml_playground.training.checkpointing.service import CheckpointService
from ml_playground.training.context import Hook
from ml_playground.training.memory import ModelShape, available_memory, check_fits, estimate_memory


def model_shape(model: nn.Module, total: int, trainable: int) -> ModelShape:
    config = getattr(model, "config", None)

    def get(*names: str) -> int:
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
        raise UserError(f"the base model's config has none of {names}; cannot estimate memory")

    return ModelShape(
        parameters=total,
        trainable=trainable,
        hidden_size=get("hidden_size", "n_embd", "d_model"),
        num_layers=get("num_hidden_layers", "n_layer", "num_layers"),
        num_heads=get("num_attention_heads", "n_head", "num_heads"),
        vocab_size=get("vocab_size"),
    )


def _config_fingerprint(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    data = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    shape = {k: data.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (transformers 5 renamed the method; older names warn)."""
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:  # pragma: no cover (transformers < 5)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)  # type: ignore[operator]


def make_merger(
    base_model: str, revision: str | None, dtype: torch.dtype, cache_dir: Path
) -> Callable[[Path, Path], None]:
    """Write base + adapters, merged, as a plain Hugging Face model folder (loads without PEFT)."""

    def merge(adapter_dir: Path, target: Path) -> None:
        from transformers import AutoTokenizer

        # Loading a model draws from the global RNG (weight init before the checkpoint is read); the
        # training run's RNG stream (dropout) must not depend on whether a merged model was exported.
        with torch.random.fork_rng(devices=[]):
            base = load_pretrained_model(base_model, revision=revision, dtype=dtype, cache_dir=cache_dir)
            merged = load_adapters(base, adapter_dir).merge_and_unload()
        merged.save_pretrained(str(target))
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(target))

    return merge


def route_frozen_products(
    base: nn.Module,
    setting: LinearKernelSetting,
    precision: Precision,
    rows: int,
    chooser: Callable[[frozen_products.FrozenWorkload], LinearKernel] = frozen_products.choose,
) -> LinearKernel:
    """The kernel of the base model's frozen products, picked for its projections at ``rows`` tokens a step
    (``auto``: measured once per machine), and the projections routed to it; the head's loss takes it too."""
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    projections = [layer for layer in frozen_products.frozen_linears(base) if layer is not head]
    if not projections:
        return "aten"
    work = frozen_products.workload(projections, rows)
    kernel = frozen_products.pick(setting, precision.device, precision.dtype, work, chooser=chooser)
    frozen_products.route(projections, kernel)
    return kernel


def finetune_setup(ctx: BuildContext) -> TrainingSetup:
    config, dataset, precision, console, dist = ctx.config, ctx.dataset, ctx.precision, ctx.console, ctx.dist
    tc = config.train
    settings = family_settings(config, HfLoraModelConfig)
    if dist.enabled:
        raise UserError("LoRA fine-tuning runs in one process; launch it without torchrun")
    tokenizer = load_tokenizer(dataset.dataset_dir / TOKENIZER_DIR, config.prepare.cache_dir)
    if not isinstance(tokenizer, PretrainedTokenizer):
        raise DataError(
            f"the dataset was prepared with a {tokenizer.kind} tokenizer; fine-tuning needs the base model's "
            "(prepare.tokenizer = 'hf'); run prepare again",
            path=dataset.dataset_dir,
        )
    # the adapters' (and the merged model's) tokenizer carries the template the run trains with, or none for
    # a plain-text run: serve, chat and export then follow what the model saw
    apply_text_format(tokenizer.tokenizer, text_format(dataset.meta))
    dtype = precision.weight_dtype
    base = load_pretrained_model(
        settings.base_model, revision=settings.revision, dtype=dtype, cache_dir=config.prepare.cache_dir
    )
    embeddings = base.get_input_embeddings()
    rows = int(embeddings.weight.shape[0]) if isinstance(embeddings, nn.Embedding) else dataset.vocab_size
    if dataset.vocab_size > rows:
        raise DataError(
            f"the dataset's tokenizer has {dataset.vocab_size} tokens, the base model only {rows} embeddings; "
            "prepare the data with the base model's tokenizer",
            path=dataset.dataset_dir,
        )
    if settings.gradient_checkpointing:
        enable_activation_checkpointing(base)
    peft_model = apply_lora(base, settings.lora)
    peft_model.to(precision.device)
    kernel = route_frozen_products(base, settings.linear_kernel, precision, tc.data.batch_size * tc.sequence_length)
    if kernel != "aten":
        say(console, f"linear kernel: {kernel} for the frozen products (train.model.linear_kernel)")
    if settings.compile and compile_layers_for_training(base, lambda line: say(console, line)):
        say(console, "torch.compile: the decoder layers, for training steps (the first step compiles)")
    total, trainable = parameter_counts(peft_model)
    estimate = estimate_memory(
        model_shape(base, total, trainable),
        weight_dtype=dtype,
        batch_size=tc.data.batch_size,
        sequence_length=tc.sequence_length,
        gradient_checkpointing=settings.gradient_checkpointing,
    )
    available, where = available_memory(precision.device)
    say(console, f"{estimate.describe()} ({available / 2**30:.2f} GiB {where})")
    check_fits(estimate, available, where)
    model = LogitsOnly(peft_model)

    def trainable_state() -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        state: dict[str, torch.Tensor] = get_peft_model_state_dict(peft_model)
        return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}

    def load_trainable(state: Mapping[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(peft_model, dict(state))
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise DataError(f"checkpoint holds weights this LoRA setup does not have: {unexpected[:3]}")

    def make_hooks(logger: MetricsLogger, service: CheckpointService) -> list[Hook]:
        merge = (
            make_merger(settings.base_model, settings.revision, dtype, config.prepare.cache_dir)
            if settings.save_merged_on_best
            else None
        )
        return [
            AdapterExportHook(
                peft_model=peft_model, tokenizer=tokenizer.tokenizer, out_dir=tc.out_dir, service=service, merge=merge
            )
        ]

    def generate_text(prompt: str, params: SamplingParams) -> str:
        was_training = peft_model.training
        ids = tokenizer.encode(prompt) or [tokenizer.eos_token_id or 0]
        new = generate_ids(peft_model, ids, params, tokenizer.eos_token_id)
        peft_model.train(was_training)
        return prompt + tokenizer.decode(new)

    lora = settings.lora
    return TrainingSetup(
        model=model,
        model_config={
            "kind": "lora",
            "base_model": settings.base_model,
            "revision": settings.revision,
            "base_config": _config_fingerprint(base),
            "r": lora.r,
            "alpha": lora.alpha,
            "dropout": lora.dropout,
            "target_modules": sorted(lora.target_modules),
        },
        summary=(
            f"base model {settings.base_model}: {total / 1e6:.2f}M parameters, {trainable / 1e6:.3f}M trainable "
            f"({100 * trainable / total:.2f}% LoRA, r={lora.r})"
        ),
        trainable_state=trainable_state,
        load_trainable=load_trainable,
        generate_text=generate_text,
        make_hooks=make_hooks,
        loss=target_loss(base, model, kernel),
    )
