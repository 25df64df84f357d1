from __future__ import annotations

import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ml_playground.core.devices import Precision
from ml_playground.core.errors import TrainingDivergedError
from ml_playground.data_pipeline.batches import BatchSampler
from ml_playground.families.gpt.model import GPT, GPTConfig
from ml_playground.training.context import EvalResult, Hook, LoopState, TrainingContext
from ml_playground.training.ema import EMA
from ml_playground.training.loop.runner import TrainingLoop
from ml_playground.training.loop.scheduler import LrSchedule
from ml_playground.training.signals import StopSignal

pytestmark = pytest.mark.unit

CPU = Precision(torch.device("cpu"), torch.float32)
TOKENS = (np.arange(2000) % 17).astype(np.uint16)  # a periodic sequence a GPT learns quickly


def make_loop(
    hooks: list[Hook], *, max_iters: int = 20, accum: int = 1, batch_size: int = 8, ema: bool = False, **kw: object
) -> TrainingLoop:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=1, n_head=2, n_embd=16))
    return TrainingLoop(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3),
        schedule=LrSchedule(max_lr=3e-3, min_lr=3e-4, warmup_iters=2, decay_iters=max_iters),
        batches=BatchSampler(TOKENS, block_size=16, batch_size=batch_size, seed=1),
        precision=CPU,
        max_iters=max_iters,
        grad_accum_steps=accum,
        grad_clip=1.0,
        hooks=hooks,
        ema=EMA(model, 0.9) if ema else None,
        **kw,  # type: ignore[arg-type]
    )


class Recorder(Hook):
    state_key = "recorder"

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.losses: list[float] = []

    def on_train_start(self, ctx: TrainingContext) -> None:
        self.events.append(("start", ctx.state.step))

    def on_step_end(self, ctx: TrainingContext) -> None:
        assert ctx.last_step is not None
        self.losses.append(ctx.last_step.loss)
        self.events.append(("step", ctx.state.step))
        if ctx.state.step % 5 == 0:
            ctx.emit_eval(EvalResult(ctx.state.step, 1.0, 10))
        if ctx.state.step == 10:
            ctx.emit_checkpoint_saved(Path("x"))

    def on_eval_end(self, ctx: TrainingContext, result: EvalResult) -> None:
        self.events.append(("eval", result.step))

    def on_checkpoint_saved(self, ctx: TrainingContext, path: Path) -> None:
        self.events.append(("saved", ctx.state.step))

    def on_train_end(self, ctx: TrainingContext) -> None:
        self.events.append(("end", ctx.state.step))

    def state_dict(self) -> dict[str, int]:
        return {"n": len(self.events)}


def test_loop_trains_and_emits_events_in_order() -> None:
    recorder = Recorder()
    loop = make_loop([recorder, Hook()], max_iters=40)
    ctx = loop.run(loop.new_context(LoopState()))
    assert ctx.state.step == 40
    assert ctx.state.tokens_seen == 40 * 8 * 16
    assert ctx.state.elapsed_s > 0
    assert recorder.events[0] == ("start", 0)
    assert recorder.events[1:4] == [("step", 1), ("step", 2), ("step", 3)]
    assert ("eval", 5) in recorder.events
    assert ("saved", 10) in recorder.events
    assert recorder.events[-1] == ("end", 40)
    assert np.mean(recorder.losses[-5:]) < np.mean(recorder.losses[:5]) - 0.5
    assert ctx.last_eval == EvalResult(40, 1.0, 10)
    assert ctx.hook_states() == {"recorder": {"n": len(recorder.events)}}
    assert ctx.last_step is not None
    assert ctx.last_step.tokens_per_second > 0
    assert 0 < ctx.last_step.grad_norm < math.inf


def test_state_round_trip_and_resume_from_a_step() -> None:
    state = LoopState(step=3, tokens_seen=30, elapsed_s=1.5)
    assert LoopState.from_dict(state.to_dict()) == state
    recorder = Recorder()
    loop = make_loop([recorder], max_iters=5)
    loop.run(loop.new_context(LoopState(step=3)))
    assert [e for e in recorder.events if e[0] == "step"] == [("step", 4), ("step", 5)]


def test_request_stop_ends_the_loop_with_the_first_reason() -> None:
    class StopAt(Hook):
        def on_step_end(self, ctx: TrainingContext) -> None:
            if ctx.state.step == 3:
                ctx.request_stop("first")
                ctx.request_stop("second")

    loop = make_loop([StopAt()])
    ctx = loop.run(loop.new_context(LoopState()))
    assert ctx.state.step == 3
    assert ctx.stop_reason == "first"
    assert ctx.interrupted_by is None


def test_a_signal_finishes_the_step_then_stops() -> None:
    stop = StopSignal()
    handler_before = signal.getsignal(signal.SIGTERM)

    class SendSigterm(Hook):
        def on_step_end(self, ctx: TrainingContext) -> None:
            if ctx.state.step == 2:
                signal.raise_signal(signal.SIGTERM)

    loop = make_loop([SendSigterm()], stop_signal=stop)
    with stop:
        ctx = loop.run(loop.new_context(LoopState()))
    assert ctx.state.step == 2
    assert ctx.interrupted_by == "SIGTERM"
    assert ctx.stop_reason == "interrupted by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == handler_before


def test_second_signal_aborts_at_once() -> None:
    with StopSignal() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


def test_nan_loss_stops_with_the_step_named() -> None:
    class Poison(Hook):
        def on_step_end(self, ctx: TrainingContext) -> None:
            if ctx.state.step == 2:
                with torch.no_grad():
                    next(ctx.model.parameters()).fill_(float("nan"))

    loop = make_loop([Poison()])
    with pytest.raises(TrainingDivergedError, match="loss became nan at step 3"):
        loop.run(loop.new_context(LoopState()))


def test_accumulation_matches_one_large_batch() -> None:
    """Two micro-batches of 4 (accumulated) equal one batch of 8 when they hold the same rows."""

    class Halves(BatchSampler):
        def batch(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = BatchSampler(TOKENS, block_size=16, batch_size=8, seed=1).batch(step)
            return x[micro_step * 4 : (micro_step + 1) * 4], y[micro_step * 4 : (micro_step + 1) * 4]

    whole = make_loop([], max_iters=3)
    whole.run(whole.new_context(LoopState()))
    split = make_loop([], max_iters=3, accum=2, batch_size=4)
    split.batches = Halves(TOKENS, block_size=16, batch_size=4, seed=1)
    split.run(split.new_context(LoopState()))
    for a, b in zip(whole.model.parameters(), split.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_ema_is_updated_each_step() -> None:
    loop = make_loop([], max_iters=3, ema=True)
    assert loop.ema is not None
    before = [t.clone() for t in loop.ema.shadow]
    loop.run(loop.new_context(LoopState()))
    assert not all(torch.equal(a, b) for a, b in zip(before, loop.ema.shadow, strict=True))


def test_custom_forward_is_used_for_training() -> None:
    calls = {"n": 0}
    loop = make_loop([], max_iters=2)
    model: nn.Module = loop.model

    def counting_forward(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out: torch.Tensor = model(x)
        return out

    loop.forward = counting_forward
    loop.run(loop.new_context(LoopState()))
    assert calls["n"] == 2


def test_hook_states_are_restored_by_key() -> None:
    class Counter(Hook):
        state_key = "counter"

        def __init__(self) -> None:
            self.value = 0

        def state_dict(self) -> dict[str, int]:
            return {"value": self.value}

        def load_state_dict(self, state: dict[str, int]) -> None:
            self.value = state["value"]

    counter = Counter()
    loop = make_loop([counter, Hook()])
    ctx = loop.new_context(LoopState())
    ctx.load_hook_states({"counter": {"value": 7}, "gone": {}})
    assert counter.value == 7
    assert ctx.hook_states() == {"counter": {"value": 7}}


def test_each_group_follows_the_schedule_at_its_own_ratio() -> None:
    loop = make_loop([], max_iters=3)
    model = loop.model
    matrices = [p for p in model.parameters() if p.dim() == 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    loop.optimizer = torch.optim.AdamW([{"params": matrices, "lr_ratio": 10.0}, {"params": others}], lr=1.0)
    loop.run(loop.new_context(LoopState()))
    scaled, plain = loop.optimizer.param_groups
    expected = loop.schedule(3)
    assert plain["lr"] == pytest.approx(expected)
    assert scaled["lr"] == pytest.approx(10 * expected)
