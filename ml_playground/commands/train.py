"""Wire the training parts from config: dataset, model, optimizer, EMA, hooks, loggers, checkpoints.

This is the only place that constructs them; the loop receives them finished.
"""

from __future__ import annotations

import contextlib
import io
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.console import say
from ml_playground.core.devices import Precision, resolve_precision
from ml_playground.core.errors import CheckpointError, DataError
from ml_playground.core.logging_protocol import MetricsLogger
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.data_pipeline.batches import BatchSampler, TokenDataset, open_dataset
from ml_playground.data_pipeline.meta import TOKENIZER_DIR, text_format
from ml_playground.data_pipeline.speeches import read_conditions
from ml_playground.families.base import BuildContext, TrainingSetup
from ml_playground.families.registry import family_of
from ml_playground.training.checkpointing.rng import capture_rng, restore_rng
from ml_playground.training.checkpointing.service import (
    CheckpointPayload,
    CheckpointService,
    FileWriter,
    LoadedCheckpoint,
    write_file_durably,
)
from ml_playground.training.checkpointing.state import StateMap, StatePart
from ml_playground.training.context import Hook, LoopState, TrainingContext
from ml_playground.training.distributed import (
    DistributedContext,
    context_from_env,
    init_process_group,
    is_sharded,
    shutdown,
)
from ml_playground.training.evaluation import estimate_loss, evaluate_split
from ml_playground.training.hooks.checkpointing import CheckpointHook
from ml_playground.training.hooks.early_stopping import EarlyStoppingHook
from ml_playground.training.hooks.evaluation import EvaluationHook
from ml_playground.training.hooks.logging import LoggingHook
from ml_playground.training.hooks.sampling import SampleHook
from ml_playground.training.loggers import CompositeLogger, ConsoleLogger, JsonlLogger, TensorBoardLogger
from ml_playground.training.loop.runner import TrainingLoop
from ml_playground.training.loop.scheduler import LrSchedule
from ml_playground.training.optim import build_optimizer
from ml_playground.training.run_lock import RunLock
from ml_playground.training.signals import StopSignal
from ml_playground.training.trackers import MlflowLogger, WandbLogger, start_trackers


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


def tracker_factories(config: ExperimentConfig) -> dict[str, Callable[[], MetricsLogger]]:
    """The trackers ``train.trackers`` turns on, not yet started (``start_trackers`` starts each guarded)."""
    tc, trackers = config.train, config.train.trackers
    settings = config.model_dump(mode="json")
    factories: dict[str, Callable[[], MetricsLogger]] = {}
    if trackers.mlflow:
        uri = trackers.mlflow_tracking_uri or (tc.out_dir / "mlruns").resolve().as_uri()
        factories["mlflow"] = lambda: MlflowLogger(uri, trackers.project, str(tc.out_dir), settings)
    if trackers.wandb:
        factories["wandb"] = lambda: WandbLogger(tc.out_dir / "wandb", trackers.project, str(tc.out_dir), settings)
    return factories


def configure_torch(config: ExperimentConfig) -> None:
    train = config.train
    if train.num_threads is not None:
        torch.set_num_threads(train.num_threads)
    use_deterministic_algorithms(train.deterministic, compiling=bool(getattr(train.model, "compile", False)))
    random.seed(train.seed)
    np.random.seed(train.seed % 2**32)
    torch.manual_seed(train.seed)


def use_deterministic_algorithms(mode: bool, *, compiling: bool) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=True)``, without importing inductor unless compiling.

    PyTorch's function imports ``torch._inductor.config`` to set inductor's own flag as well: 1.4 s of a 27 s
    speedrun on a 2-core AMD EPYC, for a flag only compiled code reads. Where nothing is compiled (and inductor
    is not loaded already) only the flag the eager kernels read is set.

    Deterministic mode also fills every new tensor with NaN (``fill_uninitialized_memory``), a guard
    against kernels that read memory they never wrote, paid as one more write of every activation and
    gradient: 3% of a float32 speedrun step's operator time and 8% of a bfloat16 one under the profiler on
    a 2-core AMD EPYC. It is turned off; the deterministic kernels stay chosen, and a killed run still resumes
    bit-identically (tests/integration/test_resume.py).
    """
    if compiling or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=True)  # pyright: ignore[reportPrivateUsage]
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]


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
            run = build_run(config, dataset, precision, service, console, quiet, extra_hooks, dist)
            restore_run(run, console)
            result = run_to_end(run, console, install_signal_handlers)
            # every rank done (rank 0 may still be writing): a rank that tears its process group down while
            # another still uses it can abort in gloo's destructors ("terminate called without an active
            # exception", seen under fsdp); not on error paths, where a dead rank would make this wait time out
            dist.barrier()
            return result
    finally:
        shutdown(dist)


@dataclass
class Run:
    """Everything one training run is made of, built and not yet started."""

    config: ExperimentConfig
    loop: TrainingLoop
    ctx: TrainingContext
    state_map: StateMap
    logger: CompositeLogger
    checkpoint_hook: CheckpointHook
    stop_signal: StopSignal
    loaded: LoadedCheckpoint | None
    dist: DistributedContext


def build_run(
    config: ExperimentConfig,
    dataset: TokenDataset,
    precision: Precision,
    service: CheckpointService,
    console: Console,
    quiet: bool,
    extra_hooks: Sequence[Hook],
    dist: DistributedContext,
) -> Run:
    """The model (from its family), optimizer, batches, loggers, hooks and the loop; the checkpoint to resume."""
    tc = config.train
    configure_torch(config)
    setup = family_of(config).build_for_training(BuildContext(config, dataset, precision, console, dist))
    model = setup.model
    sharded = is_sharded(model)  # fsdp: forward passes, evaluations and state gathers involve every rank
    optimizer = build_optimizer(model, tc.optim, precision.device)
    loaded = service.load_latest_intact()
    if loaded is not None:
        check_same_shape(loaded, setup.model_config)
    resumed_from = loaded.step if loaded is not None else None
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
        whole=dataset.whole_records,
    )
    estimate_batches = BatchSampler(
        dataset.train,
        block_size=block_size,
        batch_size=tc.data.batch_size,
        seed=tc.seed + 1,
        mask=dataset.train_mask,
        index=dataset.train_index,
        whole=dataset.whole_records,
    )
    metrics_path = tc.out_dir / "metrics.jsonl"
    sinks: list[MetricsLogger] = []
    if dist.is_main:
        sinks = [
            ConsoleLogger(total_steps=tc.max_iters, start_step=resumed_from or 0, console=console, quiet=quiet),
            JsonlLogger(metrics_path, resume_step=resumed_from if resumed_from is not None else None),
            TensorBoardLogger(tc.out_dir / "tb", purge_step=(resumed_from + 1) if resumed_from is not None else None),
            *start_trackers(tracker_factories(config), warn=lambda text: say(console, text)),
        ]
    logger = CompositeLogger(sinks)
    stop_signal = StopSignal()
    # a single process stops inside an evaluation; ranks would disagree on where (and wait on each other)
    interrupted = None if dist.enabled else (lambda: stop_signal.received is not None)
    # the loop calls hooks by HookPhase (evaluation and the rest, then the checkpoint, then logging)
    hooks: list[Hook] = [
        EvaluationHook(
            interval=tc.eval_interval,
            at_start=tc.eval_at_start,
            evaluate_val=lambda: _val_loss(
                model, dataset, block_size, precision, dist, tc.eval_max_tokens, interrupted
            ),
            estimate_train=lambda: estimate_loss(model, estimate_batches, tc.eval_iters, precision, setup.loss),
        ),
        EarlyStoppingHook(patience=tc.early_stopping.patience, target_val_loss=tc.early_stopping.target_val_loss),
    ]
    if tc.sample_during_training.every_evals and (dist.is_main or sharded):  # sharded: every rank generates
        hooks.append(
            SampleHook(
                every_evals=tc.sample_during_training.every_evals,
                generate_text=setup.generate_text,
                prompt=tc.sample_during_training.prompt,
                params=SamplingParams(
                    max_new_tokens=tc.sample_during_training.max_new_tokens, temperature=0.8, top_k=200, seed=tc.seed
                ),
                logger=logger,
            )
        )
    if setup.make_hooks is not None:
        hooks.extend(setup.make_hooks(logger, service))
    hooks.extend(extra_hooks)
    config_dump = config.model_dump(mode="json")
    scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.needs_grad_scaler)
    conditions = read_conditions(dataset.dataset_dir) if dataset.meta.get("conditioning") == "header" else None

    def build_payload(ctx: TrainingContext) -> CheckpointPayload:
        return state_map.payload(
            ctx.state.step,
            config=config_dump,
            model_config=setup.model_config,
            tokenizer_dir=dataset.dataset_dir / TOKENIZER_DIR,
            extra_meta={
                "val_loss": ctx.last_eval.val_loss if ctx.last_eval is not None else None,
                "dataset_fingerprint": dataset.meta.get("fingerprint"),
                "conditions": conditions,  # so that sampling a conditioned model needs only the checkpoint
                "text_format": text_format(dataset.meta),  # chat (with its template) or plain text
            },
        )

    # rank 0 writes; under fsdp every rank builds the payload too, as gathering the shards takes them all
    checkpoint_hook = CheckpointHook(
        service=service, interval=tc.checkpoint.interval, build_payload=build_payload, write=dist.is_main
    )
    if dist.is_main or sharded:
        hooks.append(checkpoint_hook)
    if dist.is_main:  # only rank 0 logs
        hooks.append(
            LoggingHook(
                logger=logger,
                log_interval=tc.log_interval,
                metrics_path=metrics_path,
                plot_path=tc.out_dir / "loss.png",
            )
        )
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
        ema=setup.ema,
        scaler=scaler if scaler.is_enabled() else None,
        stop_signal=stop_signal,
        forward=setup.forward,
        loss=setup.loss,
        no_sync=setup.no_sync,
        dist=dist,
    )
    ctx = loop.new_context(LoopState())
    state_map = training_state_map(config, setup, optimizer, scaler, ctx, sharded=sharded, world_size=dist.world_size)
    return Run(config, loop, ctx, state_map, logger, checkpoint_hook, stop_signal, loaded, dist)


def restore_run(run: Run, console: Console) -> None:
    """Put the checkpoint's state back, part by part in ``RESTORE_ORDER``; one that does not fit is refused."""
    try:
        if run.loaded is not None:
            run.state_map.restore(run.loaded)
            say(console, f"resuming from {run.loaded.path} (step {run.ctx.state.step})")
        if run.dist.enabled:  # each rank its own dropout stream, reproducible from seed, rank and step
            torch.manual_seed(run.config.train.seed + 1_000_003 * (run.dist.rank + 1) + run.ctx.state.step)
    except BaseException:
        run.logger.close()
        raise


def run_to_end(run: Run, console: Console, install_signal_handlers: bool) -> TrainResult:
    """Train to ``train.max_iters`` (or a stop); the loggers are closed whatever happens."""
    tc, ctx = run.config.train, run.ctx
    try:
        if ctx.state.step >= tc.max_iters:
            say(console, f"already trained to step {ctx.state.step} (train.max_iters = {tc.max_iters}); nothing to do")
        elif install_signal_handlers:
            with run.stop_signal:
                run.loop.run(ctx)
        else:
            run.loop.run(ctx)
    finally:
        run.logger.close()  # also on errors (NaN loss, failed checkpoint write): flush what was logged
    best = run.checkpoint_hook.best_val_loss
    return TrainResult(
        out_dir=tc.out_dir,
        step=ctx.state.step,
        stop_reason=ctx.stop_reason,
        interrupted_by=ctx.interrupted_by,
        best_val_loss=best if best != float("inf") else None,
        last_val_loss=ctx.last_eval.val_loss if ctx.last_eval is not None else None,
        elapsed_s=ctx.state.elapsed_s,
        resumed_from_step=run.loaded.step if run.loaded is not None else None,
        is_main=run.dist.is_main,
    )


def training_state_map(
    config: ExperimentConfig,
    setup: TrainingSetup,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ctx: TrainingContext,
    *,
    sharded: bool = False,
    world_size: int = 1,
) -> StateMap:
    """Every stateful part of the run, in the order a resume restores them.

    ``sharded`` (fsdp): model and optimizer state are gathered whole and saved in the same format as
    an unsharded run's (``training/sharded_state.py``), so either can resume the other.
    """
    tc = config.train

    def save_optimizer() -> dict[str, Any]:
        if sharded:
            from ml_playground.training.sharded_state import full_optimizer_state

            return full_optimizer_state(setup.model, optimizer)
        return optimizer.state_dict()

    def load_optimizer(state: Any) -> None:
        try:
            if sharded:
                from ml_playground.training.sharded_state import load_full_optimizer_state

                load_full_optimizer_state(setup.model, optimizer, state)
            else:
                optimizer.load_state_dict(state)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(
                f"its optimizer state does not fit train.optim.name = {tc.optim.name!r} ({exc}); "
                "resume with the optimizer it was trained with, or start over with --fresh"
            ) from None

    # what decides the batches: the global batch (a resume may change the process count and keep it), the
    # accumulation and the window length; checkpoints from before these were saved are not checked
    batches_now = {
        "global_batch": tc.data.batch_size * world_size,
        "grad_accum_steps": tc.data.grad_accum_steps,
        "block_size": tc.sequence_length,
    }
    batch_keys = {
        "global_batch": "train.data.batch_size",
        "grad_accum_steps": "train.data.grad_accum_steps",
        "block_size": "train.model.block_size",
    }

    def save_sampler() -> dict[str, Any]:
        return {"seed": tc.seed, "next_step": ctx.state.step + 1, **batches_now}

    def load_scaler(state: Any) -> None:
        if scaler.is_enabled() and state:  # empty: saved by a run without float16, whose scale starts fresh
            scaler.load_state_dict(state)

    def load_loop(state: Any) -> None:
        ctx.state = LoopState.from_dict(state)

    def check_sampler(state: Any) -> None:
        if int(state.get("seed", tc.seed)) != tc.seed:
            raise CheckpointError(
                f"was trained with train.seed = {state['seed']} (now {tc.seed}): its batches after the resume would "
                "not be the ones it would have seen; resume with that seed, or start over with --fresh"
            )
        if tc.data.allow_changed_batches:
            return
        for name, now in batches_now.items():
            saved = int(state.get(name, now))
            if saved != now:
                what = f"{batch_keys[name]} = {saved} (now {now})"
                if name == "global_batch":
                    what = f"a global batch of {saved} sequences ({batch_keys[name]} x processes; now {now})"
                raise CheckpointError(
                    f"was trained with {what}: the batches after the resume would differ from an uninterrupted "
                    f"run's; resume with {batch_keys[name]} as it was, set train.data.allow_changed_batches = true "
                    "to accept the change, or start over with --fresh"
                )

    parts = {
        "model": StatePart("model", setup.trainable_state, setup.load_trainable),
        "optimizer": StatePart("training", save_optimizer, load_optimizer),
        "scaler": StatePart("training", scaler.state_dict, load_scaler, required=False),
        "rng": StatePart("training", capture_rng, restore_rng),
        "loop": StatePart("json", lambda: ctx.state.to_dict(), load_loop),
        "hooks": StatePart("json", ctx.hook_states, ctx.load_hook_states, required=False),
        "sampler": StatePart("json", save_sampler, check_sampler),
    }
    if setup.ema is not None:
        ema = setup.ema
        parts["ema"] = StatePart("ema", ema.state_dict, ema.load_state_dict, required=False)
    return StateMap(parts)


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
        whole=dataset.whole_records,
    )
    return result.loss, result.tokens
