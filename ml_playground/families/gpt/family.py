"""``kind = "gpt"``: our GPT (``families/gpt/model.py``), trained from scratch.

Checkpoints hold the whole model (and its EMA); sampling uses our generation loop with the KV
cache; export writes a Hugging Face GPT-2 folder, a GGUF file or an Ollama Modelfile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from torch import nn

from ml_playground.configuration.models import ExperimentConfig, GptModelConfig
from ml_playground.core.console import say
from ml_playground.core.devices import resolve_precision
from ml_playground.core.errors import CheckpointError, ConfigError, DataError
from ml_playground.core.linear_kernels import LinearKernelSetting
from ml_playground.core.row_products import measured_blocks
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.core.tokenizer import load_tokenizer
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.data_pipeline.batches import TokenDataset
from ml_playground.data_pipeline.header import END_TOKEN, FIELD_TOKENS, header_stop_ids
from ml_playground.data_pipeline.meta import TOKENIZER_DIR
from ml_playground.export.request import ExportRequest, ExportResult
from ml_playground.families.base import BuildContext, InferenceModel, TrainingSetup, family_settings
from ml_playground.families.gpt.batched import BatchedDecoder
from ml_playground.families.gpt.decode import decode_matrices, kernel_product
from ml_playground.families.gpt.generation import generate, generate_stream
from ml_playground.families.gpt.kernel_choice import Workload, pick_linear_kernel
from ml_playground.families.gpt.model import GPT, GPTConfig
from ml_playground.training.checkpointing.service import CheckpointService, LoadedCheckpoint
from ml_playground.training.distributed import is_sharded, wrap_model
from ml_playground.training.ema import EMA
from ml_playground.training.memory import ModelShape, available_memory, check_fits, estimate_memory


def gpt_config(model: GptModelConfig, vocab_size: int, conditions: tuple[int, int] | None = None) -> GPTConfig:
    """``conditions``: the ids of the marker and reset tokens when ``model.condition_embedding`` is on."""
    return GPTConfig(
        condition_marker=conditions[0] if conditions else None,
        condition_reset=conditions[1] if conditions else None,
        vocab_size=vocab_size,
        block_size=model.block_size,
        n_layer=model.n_layer,
        n_head=model.n_head,
        n_embd=model.n_embd,
        dropout=model.dropout,
        bias=model.bias,
        rotary=model.rotary,
        qk_norm=model.qk_norm,
        activation=model.activation,
        tie_weights=model.tie_weights,
        condition_bias=model.condition_bias,  # the model adds its head only where a marker is given
    )


def condition_tokens(dataset: TokenDataset) -> tuple[int, int]:
    """The ids of ``<|party|>`` and ``<|end|>`` in a header-conditioned dataset's tokenizer."""
    if dataset.meta.get("conditioning") != "header":
        raise ConfigError(
            "needs a header-conditioned dataset (prepare.conditioning = 'header')",
            key="train.model.condition_embedding",
        )
    tokenizer = load_tokenizer(dataset.dataset_dir / TOKENIZER_DIR)
    ids = [tokenizer.token_id(token) for token in (FIELD_TOKENS["party"], END_TOKEN)]
    if ids[0] is None or ids[1] is None:
        raise DataError("the tokenizer lacks the header markers (run prepare again)", path=dataset.dataset_dir)
    return ids[0], ids[1]


def maybe_compile(
    model: GPT, enabled: bool, console: Console, compiler: Callable[[nn.Module], Any] = torch.compile
) -> nn.Module | None:
    """``torch.compile`` when asked and the platform can; otherwise one warning and eager mode."""
    if not enabled:
        return None
    try:
        compiled = compiler(model)
        probe = torch.zeros((1, model.config.block_size), dtype=torch.long, device=next(model.parameters()).device)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            compiled(probe)
        model.train(was_training)
        result: nn.Module = compiled
        return result
    except Exception as exc:  # compile failures come from many backends; all mean "run eager"
        say(console, f"warning: torch.compile is not available here ({type(exc).__name__}); training without it")
        return None


def model_from_checkpoint(
    loaded: LoadedCheckpoint,
    device: torch.device,
    weights: Literal["raw", "ema"] = "raw",
    linear_kernel: LinearKernelSetting = "aten",
) -> GPT:
    try:
        config = GPTConfig(**loaded.manifest["model_config"])
    except TypeError as exc:
        raise CheckpointError(f"model config not understood ({exc})", path=loaded.path / "manifest.json") from None
    model = GPT(config)
    state = loaded.weights(weights)
    if weights == "ema" and config.tie_weights:  # the average holds the shared matrix once, as wte
        state["lm_head.weight"] = state["wte.weight"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit the model ({str(exc).splitlines()[0]})", path=loaded.path) from None
    decoding = Workload(model.config.n_embd, rows=1, training=False)  # what sample, chat and serve run
    model = model.to(device).use_linear_kernel(pick_linear_kernel(linear_kernel, device, decoding)).eval()
    return model.use_decode_blocks(decode_blocks(model, linear_kernel))


def decode_blocks(model: GPT, linear_kernel: LinearKernelSetting) -> dict[int, int]:
    """Row blocks for decoding products of one and two rows, by rows (``core/row_products.py``): measured where
    the kernel is ``auto`` on a CPU, else none (the plain product of the kernel asked for)."""
    if linear_kernel != "auto" or model.lm_head.weight.device.type != "cpu":
        return {}
    return measured_blocks(decode_matrices(model), kernel_product(model))


def text_generator(model: GPT, tokenizer: Tokenizer) -> Callable[[str, SamplingParams], str]:
    """``(prompt, params) -> prompt + sample`` from a model in training: its mode is restored afterwards."""

    def generate_text(prompt: str, params: SamplingParams) -> str:
        device = next(model.parameters()).device
        ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
        was_training = model.training
        out = generate(model, ids, params)
        model.train(was_training)
        return tokenizer.decode(out[0].tolist())

    return generate_text


def check_memory(ctx: BuildContext, settings: GptModelConfig, parameters: int, vocab_size: int) -> None:
    """The same estimate the LoRA path prints (float32 weights, AdamW state, activations), checked before step 1."""
    shape = ModelShape(parameters, parameters, settings.n_embd, settings.n_layer, settings.n_head, vocab_size)
    estimate = estimate_memory(
        shape,
        weight_dtype=torch.float32,
        batch_size=ctx.config.train.data.batch_size,
        sequence_length=settings.block_size,
        gradient_checkpointing=False,
    )
    available, where = available_memory(ctx.precision.device)
    if ctx.dist.is_main:
        say(ctx.console, f"{estimate.describe()} ({available / 2**30:.2f} GiB {where})")
    check_fits(
        estimate,
        available,
        where,
        key="train.data.batch_size",
        advice="lower train.data.batch_size or train.model.block_size, or train a smaller model",
    )


def state_functions(
    model: GPT, sharded: bool
) -> tuple[Callable[[], dict[str, torch.Tensor]], Callable[[Mapping[str, torch.Tensor]], None]]:
    """What a checkpoint saves of the model and how a resume puts it back: gathered whole under fsdp."""
    if sharded:
        from ml_playground.training.sharded_state import full_model_state, load_full_model_state

        return (lambda: full_model_state(model)), (lambda state: load_full_model_state(model, state))

    def load(state: Mapping[str, torch.Tensor]) -> None:
        model.load_state_dict(state)

    return model.state_dict, load


class GptFamily:
    def build_for_training(self, ctx: BuildContext) -> TrainingSetup:
        settings = family_settings(ctx.config, GptModelConfig)
        device = ctx.precision.device
        conditions = condition_tokens(ctx.dataset) if settings.condition_embedding else None
        model_config = gpt_config(settings, ctx.dataset.vocab_size, conditions)
        model = GPT(model_config).to(device)
        check_memory(ctx, settings, model.num_parameters(), ctx.dataset.vocab_size)  # before anything allocates
        training = Workload(settings.n_embd, ctx.config.train.data.batch_size * settings.block_size, training=True)
        model.use_linear_kernel(pick_linear_kernel(settings.linear_kernel, device, training))
        strategy = ctx.config.train.distributed.strategy
        train_module, no_sync = wrap_model(model, ctx.dist, strategy, device, ctx.precision.dtype)
        # after sharding: the average follows the parameters FSDP put in place (its shards, under fsdp)
        ema = EMA(model, settings.ema.decay, settings.ema.start_step) if settings.ema.enabled else None
        if ctx.dist.enabled:
            forward: nn.Module | None = train_module
            if settings.compile:
                say(ctx.console, "warning: train.model.compile is not combined with distributed training yet; eager")
        else:
            forward = maybe_compile(model, settings.compile, ctx.console)
        tokenizer = load_tokenizer(ctx.dataset.dataset_dir / TOKENIZER_DIR, ctx.config.prepare.cache_dir)
        trainable_state, load_trainable = state_functions(model, is_sharded(train_module))
        return TrainingSetup(
            model=model,
            model_config=model_config.to_dict(),
            summary=f"model: {model.num_parameters() / 1e6:.2f}M parameters",
            trainable_state=trainable_state,
            load_trainable=load_trainable,
            generate_text=text_generator(model, tokenizer),
            ema=ema,
            forward=forward,
            no_sync=no_sync,
        )

    def load_for_inference(self, config: ExperimentConfig, checkpoint: str) -> InferenceModel:
        settings = family_settings(config, GptModelConfig)
        service = CheckpointService(config.train.out_dir)
        loaded = service.load(service.resolve(checkpoint), with_training_state=False)
        tokenizer = load_tokenizer(loaded.tokenizer_dir, config.prepare.cache_dir)
        device = resolve_precision(config.train.device, config.train.dtype).device
        model = model_from_checkpoint(loaded, device, config.sample.weights, settings.linear_kernel)
        fingerprint = loaded.manifest.get("dataset_fingerprint")
        conditions = loaded.manifest.get("conditions")
        return inference_model(
            model,
            tokenizer,
            device,
            step=loaded.step,
            checkpoint=str(loaded.path),
            stop_ids=frozenset(header_stop_ids(tokenizer)),
            dataset_fingerprint=str(fingerprint) if fingerprint is not None else None,
            conditions=conditions if isinstance(conditions, dict) else None,
        )

    def export(
        self, config: ExperimentConfig, request: ExportRequest, write_hook: Callable[[Path], None] | None = None
    ) -> ExportResult:
        from ml_playground.families.gpt.export import export_gpt

        return export_gpt(config, request, write_hook)


def inference_model(
    model: GPT,
    tokenizer: Tokenizer,
    device: torch.device,
    *,
    step: int = 0,
    checkpoint: str = "random weights",
    stop_ids: frozenset[int] = frozenset(),
    dataset_fingerprint: str | None = None,
    conditions: Mapping[str, Any] | None = None,
    batched: bool = True,
) -> InferenceModel:
    """``model`` (in eval mode) behind the family interface: one-stream generation, and the batch decoder
    where it applies and ``batched`` is set (a checkpoint, the serve bench's model, the tests' tiny ones)."""
    return InferenceModel(
        module=model,
        tokenizer=tokenizer,
        context_length=model.config.block_size,
        stream=lambda prompt, params: generate_stream(model, prompt, params),
        step=step,
        checkpoint=checkpoint,
        device=device,
        stop_ids=stop_ids,
        dataset_fingerprint=dataset_fingerprint,
        conditions=conditions,
        batch_decoder=(lambda rows: BatchedDecoder(model, rows)) if batched and BatchedDecoder.applies(model) else None,
    )


FAMILY = GptFamily()
