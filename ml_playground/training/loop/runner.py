"""The training loop: batches in, optimizer steps out, events to hooks. It builds none of its parts."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import nn

from ml_playground.core.devices import Precision
from ml_playground.core.errors import TrainingDivergedError
from ml_playground.core.lazy_types import is_dtensor
from ml_playground.core.losses import cross_entropy
from ml_playground.data_pipeline.batches import BatchSampler
from ml_playground.training.context import Hook, LoopState, StepMetrics, TrainingContext, in_phase_order
from ml_playground.training.distributed import SINGLE_PROCESS, DistributedContext
from ml_playground.training.ema import EMA
from ml_playground.training.loop.scheduler import LrSchedule
from ml_playground.training.signals import StopSignal


class TrainingLoop:
    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LrSchedule,
        batches: BatchSampler,
        precision: Precision,
        max_iters: int,
        grad_accum_steps: int = 1,
        grad_clip: float = 0.0,
        hooks: Sequence[Hook] = (),
        ema: EMA | None = None,
        scaler: torch.amp.GradScaler | None = None,
        stop_signal: StopSignal | None = None,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        no_sync: Callable[[], AbstractContextManager[object]] | None = None,
        dist: DistributedContext = SINGLE_PROCESS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.batches = batches
        self.precision = precision
        self.max_iters = max_iters
        self.grad_accum_steps = grad_accum_steps
        self.grad_clip = grad_clip
        self.hooks = in_phase_order(hooks)
        self.ema = ema
        self.stop_signal = stop_signal
        self.forward = forward if forward is not None else model
        self.loss = loss if loss is not None else self._logits_loss
        self.no_sync = no_sync
        self.dist = dist
        self.clock = clock
        self.scaler = scaler  # float16: built (and checkpointed) by the wiring; None: plain backward and step

    def new_context(self, state: LoopState) -> TrainingContext:
        return TrainingContext(
            model=self.model,
            optimizer=self.optimizer,
            ema=self.ema,
            state=state,
            max_iters=self.max_iters,
            hooks=self.hooks,
        )

    def run(self, ctx: TrainingContext) -> TrainingContext:
        self.model.train()
        for hook in self.hooks:
            hook.on_train_start(ctx)
        mark = self.clock()
        while ctx.state.step < self.max_iters and ctx.stop_reason is None:
            ctx.last_step = self._step(ctx.state.step + 1)
            ctx.state.step += 1
            ctx.state.tokens_seen += ctx.last_step.tokens
            # Wall time, evaluation and checkpointing included: what a user waits for.
            now = self.clock()
            ctx.state.elapsed_s += now - mark
            mark = now
            for hook in self.hooks:
                hook.on_step_end(ctx)
            now = self.clock()
            ctx.state.elapsed_s += now - mark
            mark = now
            received = self.stop_signal.received if self.stop_signal is not None else None
            if self.dist.any(received is not None):  # every rank stops at the same step
                ctx.interrupted_by = received or "a signal to another rank"
                ctx.request_stop(f"interrupted by {ctx.interrupted_by}")
        for hook in self.hooks:
            hook.on_train_end(ctx)
        return ctx

    def _logits_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(self.forward(x), y)

    def _step(self, step: int) -> StepMetrics:
        started = self.clock()
        lr = self.schedule(step)
        for group in self.optimizer.param_groups:  # lr_ratio: a group's peak rate relative to the schedule's
            group["lr"] = lr * group.get("lr_ratio", 1.0)
        total_loss = 0.0
        tokens = 0  # what the model ran on: a batch of whole conversations ends with its longest one
        for micro in range(self.grad_accum_steps):
            x, y = self.batches.batch(step, micro)
            tokens += x.numel()
            x, y = x.to(self.precision.device), y.to(self.precision.device)
            last_micro = micro == self.grad_accum_steps - 1
            # Gradients are all-reduced once per step, on the last micro-batch.
            sync = self.no_sync() if self.no_sync is not None and not last_micro else contextlib.nullcontext()
            with sync:
                with self.precision.autocast():
                    loss = self.loss(x, y) / self.grad_accum_steps
                value = self.dist.mean(float(loss.detach()))  # the global batch's loss, the same on every rank
                if not math.isfinite(value):
                    raise TrainingDivergedError(f"loss became {value * self.grad_accum_steps} at step {step}; stopped")
                total_loss += value
                scaled: torch.Tensor = self.scaler.scale(loss) if self.scaler is not None else loss
                scaled.backward()  # type: ignore[no-untyped-call]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        grad_norm = float(norm.full_tensor() if is_dtensor(norm) else norm)  # type: ignore[attr-defined]  # fsdp: over all shards
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step when the gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(step)
        elapsed = max(self.clock() - started, 1e-9)
        tokens *= self.dist.world_size
        return StepMetrics(total_loss, lr, grad_norm, tokens / elapsed, elapsed, tokens)
