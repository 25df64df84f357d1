"""Wire the training parts from config: dataset, model, optimizer, EMA, hooks, loggers, checkpoints.

This is the only place that constructs them; the loop receives them finished.
"""

from __future__ import annotations

import contextlib
import io
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from ml_playground.configuration.models import ExperimentConfig, ModelConfig
from ml_playground.core.devices import Precision, resolve_precision
from ml_playground.core.errors import CheckpointError, ConfigError, DataError
from ml_playground.core.logging_protocol import MetricsLogger
from ml_playground.core.tokenizer import BpeTokenizer, load_tokenizer
from ml_playground.data_pipeline.batches import BatchSampler, TokenDataset, open_dataset
from ml_playground.data_pipeline.header import END_TOKEN, FIELD_TOKENS
from ml_playground.data_pipeline.meta import TOKENIZER_DIR
from ml_playground.models.core.inference import SamplingParams
from ml_playground.models.core.kernels import resolve_linear_kernel
from ml_playground.models.core.model import GPT, GPTConfig
from ml_playground.models.core.optim import build_optimizer
from ml_playground.training.checkpointing.rng import capture_rng, restore_rng
from ml_playground.training.checkpointing.service import (
    CheckpointPayload,
    CheckpointService,
    FileWriter,
    LoadedCheckpoint,
    write_file_durably,
)
from ml_playground.training.distributed import (
    DistributedContext,
    context_from_env,
    init_process_group,
    shutdown,
    wrap_model,
)
from ml_playground.training.ema import EMA
from ml_playground.training.evaluation import estimate_loss, evaluate_split
from ml_playground.training.hooks.base import Hook
from ml_playground.training.hooks.checkpointing import CheckpointHook
from ml_playground.training.hooks.early_stopping import EarlyStoppingHook
from ml_playground.training.hooks.evaluation import EvaluationHook
from ml_playground.training.hooks.logging import LoggingHook
from ml_playground.training.hooks.sampling import SampleHook
from ml_playground.training.loggers import CompositeLogger, ConsoleLogger, JsonlLogger, TensorBoardLogger
from ml_playground.training.loop.runner import LoopState, TrainingContext, TrainingLoop
from ml_playground.training.loop.scheduler import LrSchedule
from ml_playground.training.run_lock import RunLock
from ml_playground.training.signals import StopSignal


def say(console: Console, text: str) -> None:
    """One plain line: no wrapping, no markup (paths may hold brackets)."""
    console.print(text, soft_wrap=True, highlight=False, markup=False)


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    step: int
    stop_reason: str | None
    interrupted_by: str | None
    best_val_loss: float | None
    last_val_loss: float | None
    elapsed_s: float
    resumed_from_step: int | None
    is_main: bool = True


def gpt_config(model: ModelConfig, vocab_size: int, conditions: tuple[int, int] | None = None) -> GPTConfig:
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
    )


def condition_tokens(dataset: TokenDataset) -> tuple[int, int]:
    """The ids of ``<|party|>`` and ``<|end|>`` in a header-conditioned dataset's tokenizer."""
    if dataset.meta.get("conditioning") != "header":
        raise ConfigError(
            "needs a header-conditioned dataset (prepare.conditioning = 'header')",
            key="train.model.condition_embedding",
        )
    tokenizer = load_tokenizer(dataset.dataset_dir / TOKENIZER_DIR)
    ids = [
        tokenizer.token_id(token) if isinstance(tokenizer, BpeTokenizer) else None
        for token in (FIELD_TOKENS["party"], END_TOKEN)
    ]
    if ids[0] is None or ids[1] is None:
        raise DataError("the tokenizer lacks the header markers (run prepare again)", path=dataset.dataset_dir)
    return ids[0], ids[1]


def check_dataset_fits(dataset: TokenDataset, block_size: int) -> None:
    for split, tokens in (("train", dataset.train), ("validation", dataset.val)):
        if len(tokens) <= block_size:
            raise DataError(
                f"train.model.block_size {block_size} is larger than the {split} split ({len(tokens)} tokens); "
                "lower block_size or use more data",
                path=dataset.dataset_dir,
            )


def check_same_shape(loaded: LoadedCheckpoint, current: Mapping[str, Any]) -> None:
    saved = loaded.manifest.get("model_config", {})
    differing = [
        f"{k}: {saved.get(k)} in checkpoint, {current.get(k)} now"
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    ]
    if differing:
        raise CheckpointError(
            "the model shape differs from the checkpoint (" + "; ".join(differing) + "); "
            "restore those settings or start over with --fresh",
            path=loaded.path,
        )


def move_aside(out_dir: Path) -> Path | None:
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return None
    target = out_dir.with_name(f"{out_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 1
    while target.exists():
        target = out_dir.with_name(f"{out_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}")
        suffix += 1
    out_dir.rename(target)
    return target


def configure_torch(config: ExperimentConfig) -> None:
    train = config.train
    if train.num_threads is not None:
        torch.set_num_threads(train.num_threads)
    torch.use_deterministic_algorithms(train.deterministic, warn_only=True)
    random.seed(train.seed)
    np.random.seed(train.seed % 2**32)
    torch.manual_seed(train.seed)


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


@dataclass
class ModelSetup:
    """What the training wiring needs from a model family (our GPT, or a Hugging Face model with LoRA).

    ``model(x)`` returns logits (evaluation and the loop call it); ``trainable_state`` is what a
    checkpoint stores as ``model.safetensors`` and ``load_trainable`` puts it back on resume;
    ``model_config`` goes into the manifest and must match on resume.
    """

    model: nn.Module
    model_config: dict[str, Any]
    summary: str
    trainable_state: Callable[[], dict[str, torch.Tensor]]
    load_trainable: Callable[[Mapping[str, torch.Tensor]], None]
    ema: EMA | None = None
    forward: nn.Module | None = None
    no_sync: Callable[[], contextlib.AbstractContextManager[object]] | None = None
    make_hooks: Callable[[MetricsLogger, CheckpointService], list[Hook]] | None = None


def _gpt_setup(
    config: ExperimentConfig,
    dataset: TokenDataset,
    precision: Precision,
    console: Console,
    dist: DistributedContext,
) -> ModelSetup:
    tc = config.train
    conditions = condition_tokens(dataset) if tc.model.condition_embedding else None
    model_config = gpt_config(tc.model, dataset.vocab_size, conditions)
    model = GPT(model_config).to(precision.device)
    model.use_linear_kernel(resolve_linear_kernel(tc.linear_kernel, precision.device))
    ema = EMA(model, tc.ema.decay, tc.ema.start_step) if tc.ema.enabled else None
    train_module, no_sync = wrap_model(model, dist, tc.distributed.strategy, precision.device)
    if dist.enabled:
        forward: nn.Module | None = train_module
        if tc.compile:
            say(console, "warning: train.compile is not combined with distributed training yet; training eager")
    else:
        forward = maybe_compile(model, tc.compile, console)

    def make_hooks(logger: MetricsLogger, service: CheckpointService) -> list[Hook]:
        if not (tc.sample_during_training.every_evals and dist.is_main):
            return []
        return [
            SampleHook(
                every_evals=tc.sample_during_training.every_evals,
                model=model,
                tokenizer=load_tokenizer(dataset.dataset_dir / TOKENIZER_DIR, config.prepare.cache_dir),
                prompt=tc.sample_during_training.prompt,
                params=SamplingParams(
                    max_new_tokens=tc.sample_during_training.max_new_tokens, temperature=0.8, top_k=200, seed=tc.seed
                ),
                logger=logger,
                device=precision.device,
            )
        ]

    return ModelSetup(
        model=model,
        model_config=model_config.to_dict(),
        summary=f"model: {model.num_parameters() / 1e6:.2f}M parameters",
        trainable_state=model.state_dict,
        load_trainable=lambda state: model.load_state_dict(state) and None,
        ema=ema,
        forward=forward,
        no_sync=no_sync,
        make_hooks=make_hooks,
    )


def train(
    config: ExperimentConfig,
    *,
    fresh: bool = False,
    quiet: bool = False,
    console: Console | None = None,
    extra_hooks: Sequence[Hook] = (),
    write_file: FileWriter = write_file_durably,
    install_signal_handlers: bool = True,
    environ: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train from config. ``environ`` carries torchrun's RANK/WORLD_SIZE for a distributed run."""
    tc = config.train
    dataset = open_dataset(config.prepare.dataset_dir)
    check_dataset_fits(dataset, tc.sequence_length)
    precision = resolve_precision(tc.device, tc.dtype)
    dist = init_process_group(context_from_env(environ or {}), precision.device, tc.distributed.timeout_s)
    if dist.enabled and precision.device.type == "cuda":  # pragma: no cover (no GPU on the CI machine)
        precision = Precision(torch.device("cuda", dist.local_rank), precision.dtype)
    if dist.is_main:
        console = console or Console()
    else:
        console, quiet = Console(file=io.StringIO()), True  # only rank 0 prints
    try:
        if fresh and dist.is_main:
            moved = move_aside(tc.out_dir)
            if moved is not None:
                say(console, f"--fresh: moved the previous run to {moved}")
        with RunLock(tc.out_dir) if dist.is_main else contextlib.nullcontext():
            service = CheckpointService(
                tc.out_dir,
                keep_last=tc.checkpoint.keep_last,
                write_file=write_file,
                warn=lambda text: say(console, text),
            )
            if dist.is_main:
                service.remove_partial()
            dist.barrier()
            return _train_locked(
                config, dataset, precision, service, console, quiet, extra_hooks, install_signal_handlers, dist
            )
    finally:
        shutdown(dist)


def _train_locked(
    config: ExperimentConfig,
    dataset: TokenDataset,
    precision: Precision,
    service: CheckpointService,
    console: Console,
    quiet: bool,
    extra_hooks: Sequence[Hook],
    install_signal_handlers: bool,
    dist: DistributedContext,
) -> TrainResult:
    tc = config.train
    configure_torch(config)
    if tc.base_model is not None:
        from ml_playground.finetune.setup import finetune_setup

        setup = finetune_setup(config, dataset, precision, console, dist)
    else:
        setup = _gpt_setup(config, dataset, precision, console, dist)
    model, ema = setup.model, setup.ema
    optimizer = build_optimizer(model, tc.optim, precision.device)
    loaded = service.load_latest_intact()
    state = LoopState()
    if loaded is not None:
        check_same_shape(loaded, setup.model_config)
        setup.load_trainable(loaded.model)
        assert loaded.training_state is not None
        try:
            optimizer.load_state_dict(loaded.training_state["optimizer"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(
                f"its optimizer state does not fit train.optim.name = {tc.optim.name!r} ({exc}); "
                "resume with the optimizer it was trained with, or start over with --fresh",
                path=loaded.path,
            ) from None
        if ema is not None and loaded.ema is not None:
            ema.load_state_dict(loaded.ema)
        restore_rng(loaded.training_state["rng"])
        state = LoopState.from_dict(loaded.state["loop"])
        say(console, f"resuming from {loaded.path} (step {state.step})")
    resumed_from = state.step if loaded is not None else None
    if dist.enabled:  # each rank its own dropout stream, reproducible from seed, rank and step
        torch.manual_seed(tc.seed + 1_000_003 * (dist.rank + 1) + state.step)
    block_size = tc.sequence_length
    if not quiet:
        say(
            console,
            f"{setup.summary} | "
            f"device {precision.device} {str(precision.dtype).removeprefix('torch.')} | "
            f"global batch {tc.data.batch_size} x {tc.data.grad_accum_steps} accum x {dist.world_size} "
            f"process{'es' if dist.enabled else ''} = "
            f"{tc.data.batch_size * tc.data.grad_accum_steps * dist.world_size} sequences "
            f"of {block_size} tokens",
        )
    batches = BatchSampler(
        dataset.train,
        block_size=block_size,
        batch_size=tc.data.batch_size,
        seed=tc.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        mask=dataset.train_mask,
        index=dataset.train_index,
    )
    estimate_batches = BatchSampler(
        dataset.train,
        block_size=block_size,
        batch_size=tc.data.batch_size,
        seed=tc.seed + 1,
        mask=dataset.train_mask,
        index=dataset.train_index,
    )
    metrics_path = tc.out_dir / "metrics.jsonl"
    sinks: list[MetricsLogger] = []
    if dist.is_main:
        sinks = [
            ConsoleLogger(total_steps=tc.max_iters, start_step=state.step, console=console, quiet=quiet),
            JsonlLogger(metrics_path, resume_step=resumed_from if resumed_from is not None else None),
            TensorBoardLogger(tc.out_dir / "tb", purge_step=(resumed_from + 1) if resumed_from is not None else None),
        ]
    logger = CompositeLogger(sinks)
    stop_signal = StopSignal()
    # a single process stops inside an evaluation; ranks would disagree on where (and wait on each other)
    interrupted = None if dist.enabled else (lambda: stop_signal.received is not None)
    evaluation = EvaluationHook(
        interval=tc.eval_interval,
        at_start=tc.eval_at_start,
        evaluate_val=lambda: _val_loss(model, dataset, block_size, precision, dist, tc.eval_max_tokens, interrupted),
        estimate_train=lambda: estimate_loss(model, estimate_batches, tc.eval_iters, precision),
    )
    hooks: list[Hook] = [
        evaluation,
        EarlyStoppingHook(patience=tc.early_stopping.patience, target_val_loss=tc.early_stopping.target_val_loss),
    ]
    if setup.make_hooks is not None:
        hooks.extend(setup.make_hooks(logger, service))
    hooks.extend(extra_hooks)
    main_only: list[Hook] = []
    main_only.append(
        LoggingHook(
            logger=logger, log_interval=tc.log_interval, metrics_path=metrics_path, plot_path=tc.out_dir / "loss.png"
        )
    )
    config_dump = config.model_dump(mode="json")

    def build_payload(ctx: TrainingContext) -> CheckpointPayload:
        return CheckpointPayload(
            step=ctx.state.step,
            model=setup.trainable_state(),
            optimizer=optimizer.state_dict(),
            rng=capture_rng(),
            state={
                "loop": ctx.state.to_dict(),
                "hooks": ctx.hook_states(),
                "sampler": {"seed": tc.seed, "next_step": ctx.state.step + 1},
            },
            config=config_dump,
            model_config=setup.model_config,
            tokenizer_dir=dataset.dataset_dir / TOKENIZER_DIR,
            ema=ema.state_dict() if ema is not None else None,
            extra_meta={
                "val_loss": ctx.last_eval.val_loss if ctx.last_eval is not None else None,
                "dataset_fingerprint": dataset.meta.get("fingerprint"),
            },
        )

    checkpoint_hook = CheckpointHook(service=service, interval=tc.checkpoint.interval, build_payload=build_payload)
    main_only.append(checkpoint_hook)
    if dist.is_main:  # only rank 0 logs and writes checkpoints
        hooks.extend(main_only)
    loop = TrainingLoop(
        model=model,
        optimizer=optimizer,
        schedule=LrSchedule(
            max_lr=tc.optim.learning_rate,
            min_lr=tc.schedule.min_lr,
            warmup_iters=tc.schedule.warmup_iters,
            decay_iters=tc.schedule.decay_iters or tc.max_iters,
            decay=tc.schedule.decay,
        ),
        batches=batches,
        precision=precision,
        max_iters=tc.max_iters,
        grad_accum_steps=tc.data.grad_accum_steps,
        grad_clip=tc.optim.grad_clip,
        hooks=hooks,
        ema=ema,
        stop_signal=stop_signal,
        forward=setup.forward,
        no_sync=setup.no_sync,
        dist=dist,
    )
    ctx = loop.new_context(state)
    if loaded is not None:
        ctx.load_hook_states(loaded.state.get("hooks", {}))
    try:
        if state.step >= tc.max_iters:
            say(console, f"already trained to step {state.step} (train.max_iters = {tc.max_iters}); nothing to do")
        elif install_signal_handlers:
            with stop_signal:
                loop.run(ctx)
        else:
            loop.run(ctx)
    finally:
        logger.close()  # also on errors (NaN loss, failed checkpoint write): flush what was logged
    best = checkpoint_hook.best_val_loss
    return TrainResult(
        out_dir=tc.out_dir,
        step=ctx.state.step,
        stop_reason=ctx.stop_reason,
        interrupted_by=ctx.interrupted_by,
        best_val_loss=best if best != float("inf") else None,
        last_val_loss=ctx.last_eval.val_loss if ctx.last_eval is not None else None,
        elapsed_s=ctx.state.elapsed_s,
        resumed_from_step=resumed_from,
        is_main=dist.is_main,
    )


def _val_loss(
    model: nn.Module,
    dataset: TokenDataset,
    block_size: int,
    precision: Precision,
    dist: DistributedContext,
    max_targets: int | None,
    interrupted: Callable[[], bool] | None = None,
) -> tuple[float, int]:
    result = evaluate_split(
        model,
        dataset.val,
        block_size=block_size,
        precision=precision,
        dist=dist,
        mask=dataset.val_mask,
        index=dataset.val_index,
        max_targets=max_targets,
        interrupted=interrupted,
    )
    return result.loss, result.tokens
