from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_playground.core.devices import Precision
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.core.tokenizer import CharTokenizer
from ml_playground.data_pipeline.batches import BatchSampler
from ml_playground.families.gpt.family import text_generator
from ml_playground.families.gpt.model import GPT, GPTConfig
from ml_playground.training.checkpointing.rng import capture_rng
from ml_playground.training.checkpointing.service import CheckpointPayload, CheckpointService
from ml_playground.training.context import (
    EvalResult,
    Hook,
    HookPhase,
    LoopState,
    StepMetrics,
    TrainingContext,
    in_phase_order,
)
from ml_playground.training.ema import EMA
from ml_playground.training.hooks.checkpointing import CheckpointHook
from ml_playground.training.hooks.early_stopping import EarlyStoppingHook
from ml_playground.training.hooks.evaluation import EvaluationHook
from ml_playground.training.hooks.logging import LoggingHook
from ml_playground.training.hooks.sampling import SampleHook
from ml_playground.training.loggers import JsonlLogger

pytestmark = pytest.mark.unit

TEXT = "to be or not to be, that is the question\n"


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=len(set(TEXT)), block_size=16, n_layer=1, n_head=2, n_embd=16))


def context(
    model: GPT | None = None, *, step: int = 0, max_iters: int = 100, ema: EMA | None = None
) -> TrainingContext:
    model = model or tiny_model()
    ctx = TrainingContext(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters()),
        ema=ema,
        state=LoopState(step=step),
        max_iters=max_iters,
        hooks=[],
    )
    ctx.last_step = StepMetrics(loss=2.0, lr=1e-3, grad_norm=0.5, tokens_per_second=1000.0, step_time_s=0.1)
    return ctx


def test_early_stopping_patience_and_state() -> None:
    hook = EarlyStoppingHook(patience=2, target_val_loss=None)
    ctx = context()
    for step, loss in ((1, 3.0), (2, 2.0), (3, 2.5)):
        hook.on_eval_end(ctx, EvalResult(step, loss, 10))
    assert ctx.stop_reason is None
    hook.on_eval_end(ctx, EvalResult(4, 2.1, 10))
    assert ctx.stop_reason == "no improvement in validation loss for 2 evaluations"
    again = EarlyStoppingHook(patience=2, target_val_loss=None)
    again.load_state_dict(json.loads(json.dumps(hook.state_dict())))
    assert again.best == 2.0
    assert again.evals_without_improvement == 2


def test_early_stopping_target_loss() -> None:
    hook = EarlyStoppingHook(patience=None, target_val_loss=1.5)
    ctx = context(step=40)
    ctx.state.elapsed_s = 12.0
    hook.on_eval_end(ctx, EvalResult(40, 1.6, 10))
    hook.on_eval_end(ctx, EvalResult(40, 1.7, 10))
    assert ctx.stop_reason is None
    hook.on_eval_end(ctx, EvalResult(50, 1.49, 10))
    assert ctx.stop_reason == "validation loss 1.4900 reached the target 1.5 at step 50"


def test_evaluation_hook_runs_on_interval_and_at_the_end_with_ema() -> None:
    model = tiny_model()
    ema = EMA(model, decay=0.0)
    with torch.no_grad():
        ema.shadow[0].add_(1.0)
    seen: list[float] = []

    def evaluate_val() -> tuple[float, int]:
        seen.append(float(next(model.parameters()).detach().sum()))
        return float(len(seen)), 99

    hook = EvaluationHook(interval=10, evaluate_val=evaluate_val, estimate_train=lambda: 0.25)
    results: list[EvalResult] = []
    ctx = context(model, step=5, max_iters=23, ema=ema)

    class Collect(EarlyStoppingHook):
        def on_eval_end(self, ctx: TrainingContext, result: EvalResult) -> None:
            results.append(result)

    ctx.hooks = [Collect(patience=None, target_val_loss=None)]
    for step in (5, 10, 20, 23):
        ctx.state.step = step
        hook.on_step_end(ctx)
    assert [r.step for r in results] == [10, 20, 23]
    assert results[0] == EvalResult(10, 1.0, 99, 0.25, 2.0)
    assert seen[1] != seen[0]  # the second evaluation ran on the averaged weights
    assert seen[2] == seen[0]  # and the raw weights came back
    no_train = EvaluationHook(interval=1, evaluate_val=lambda: (1.0, 1))
    assert no_train.evaluate(context()).train_loss is None


def payload_builder(model: GPT) -> object:
    def build(ctx: TrainingContext) -> CheckpointPayload:
        return CheckpointPayload(
            step=ctx.state.step,
            model=model.state_dict(),
            training={"optimizer": ctx.optimizer.state_dict(), "rng": capture_rng()},
            state={"loop": ctx.state.to_dict(), "hooks": ctx.hook_states()},
            config={},
            model_config=model.config.to_dict(),
        )

    return build


def test_checkpoint_hook_writes_last_on_interval_best_on_improvement_and_at_end(tmp_path: Path) -> None:
    model = tiny_model()
    service = CheckpointService(tmp_path, keep_last=10)
    hook = CheckpointHook(service=service, interval=5, build_payload=payload_builder(model))  # type: ignore[arg-type]
    ctx = context(model, max_iters=12)
    ctx.hooks = [hook]
    saved: list[int] = []

    class Saved(EarlyStoppingHook):
        def on_checkpoint_saved(self, ctx: TrainingContext, path: Path) -> None:
            saved.append(int(path.name.removeprefix("step_")))

    ctx.hooks = [hook, Saved(patience=None, target_val_loss=None)]
    hook.on_train_start(ctx)
    for step in range(1, 13):
        ctx.state.step = step
        if step in (3, 8):
            ctx.emit_eval(EvalResult(step, 2.0 if step == 3 else 2.5, 10))
        hook.on_step_end(ctx)
    hook.on_train_end(ctx)
    assert saved == [3, 5, 10, 12]
    assert service.resolve("best").name == "step_00000003"
    assert service.resolve("last").name == "step_00000012"
    assert hook.state_dict() == {"best_val_loss": 2.0}
    hook.on_train_end(ctx)  # already saved at this step: nothing new
    assert saved == [3, 5, 10, 12]
    resumed = CheckpointHook(service=service, interval=5, build_payload=payload_builder(model))  # type: ignore[arg-type]
    resumed.load_state_dict({"best_val_loss": 2.0})
    resumed.on_train_start(ctx)
    resumed.on_train_end(ctx)
    assert saved == [3, 5, 10, 12]


def test_logging_hook_writes_steps_evals_and_the_plot(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    hook = LoggingHook(
        logger=JsonlLogger(metrics), log_interval=2, metrics_path=metrics, plot_path=tmp_path / "loss.png"
    )
    ctx = context(max_iters=5)
    for step in range(1, 6):
        ctx.state.step = step
        hook.on_step_end(ctx)
    hook.on_eval_end(ctx, EvalResult(5, 1.9, 100, 1.8, 1.7))
    hook.on_train_end(ctx)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 5, 5]
    assert set(records[0]) == {"step", "train_loss", "lr", "tokens_per_second", "grad_norm", "elapsed_s"}
    assert records[-1]["val_loss"] == 1.9
    assert records[-1]["train_loss_eval"] == 1.8
    assert records[-1]["ema_val_loss"] == 1.7
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ctx.last_step = None
    quiet = LoggingHook(logger=JsonlLogger(tmp_path / "other.jsonl"), log_interval=1)
    quiet.on_step_end(ctx)
    quiet.on_eval_end(ctx, EvalResult(5, 1.9, 100))
    quiet.on_train_end(ctx)
    assert json.loads((tmp_path / "other.jsonl").read_text()) == {"step": 5, "val_loss": 1.9, "elapsed_s": 0.0}


def test_sample_hook_logs_text_every_n_evals_without_touching_global_rng() -> None:
    texts: list[tuple[int, str, str]] = []

    class TextSink:
        def log_metrics(self, step: int, metrics: object) -> None:
            raise AssertionError("not expected")

        def log_text(self, step: int, tag: str, text: str) -> None:
            texts.append((step, tag, text))

        def close(self) -> None:
            """Nothing to release."""

    model = tiny_model()
    model.train()
    hook = SampleHook(
        every_evals=2,
        generate_text=text_generator(model, CharTokenizer.train(TEXT)),
        prompt="to ",
        params=SamplingParams(max_new_tokens=5, temperature=1.0, seed=1),
        logger=TextSink(),
    )
    ctx = context(model)
    rng_before = torch.get_rng_state()
    for step in (1, 2, 3, 4):
        hook.on_eval_end(ctx, EvalResult(step, 1.0, 1))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert [(s, t) for s, t, _ in texts] == [(2, "sample"), (4, "sample")]
    assert texts[0][2].startswith("to ")
    assert len(texts[0][2]) == 8
    assert model.training
    assert hook.state_dict() == {"evals_seen": 4}
    hook.load_state_dict({"evals_seen": 1})
    hook.on_eval_end(ctx, EvalResult(5, 1.0, 1))
    assert len(texts) == 3


def test_unused_batch_sampler_import_is_real() -> None:
    tokens = (np.arange(100) % 7).astype(np.uint16)
    assert BatchSampler(tokens, block_size=4, batch_size=2, seed=0).batch(1)[0].shape == (2, 4)
    assert Precision(torch.device("cpu"), torch.float32).needs_grad_scaler is False


def test_step_zero_is_evaluated_as_a_reference_only() -> None:
    """At the start of a fresh run (not a resumed one): logged, but no best checkpoint, no stop, no sample."""
    results: list[EvalResult] = []

    class Collect(EarlyStoppingHook):
        def on_eval_end(self, ctx: TrainingContext, result: EvalResult) -> None:
            results.append(result)

    hook = EvaluationHook(interval=10, evaluate_val=lambda: (4.0, 7), at_start=True)
    ctx = context()
    stopper = EarlyStoppingHook(patience=1, target_val_loss=5.0)
    ctx.hooks = [Collect(patience=None, target_val_loss=None), stopper]
    hook.on_train_start(ctx)
    assert results == [EvalResult(0, 4.0, 7, None, None)]
    assert ctx.stop_reason is None  # 4.0 is under the target, but nothing was trained yet
    assert stopper.best == float("inf")
    resumed = context(step=30)
    resumed.hooks = ctx.hooks
    hook.on_train_start(resumed)
    assert len(results) == 1
    off = EvaluationHook(interval=10, evaluate_val=lambda: (4.0, 7))
    off.on_train_start(ctx)
    assert len(results) == 1


def test_a_step_zero_result_is_not_a_best_checkpoint_or_a_sample(tmp_path: Path) -> None:
    model = tiny_model()
    service = CheckpointService(tmp_path)
    checkpoints = CheckpointHook(service=service, interval=5, build_payload=payload_builder(model))  # type: ignore[arg-type]
    ctx = context(model)
    checkpoints.on_eval_end(ctx, EvalResult(0, 1.0, 1))
    assert checkpoints.best_val_loss == float("inf")
    ctx.state.step = 1
    checkpoints.on_step_end(ctx)
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())
    logger = JsonlLogger(tmp_path / "m.jsonl")
    sampler = SampleHook(
        every_evals=1,
        generate_text=text_generator(model, CharTokenizer.train(TEXT)),
        prompt="to ",
        params=SamplingParams(max_new_tokens=2),
        logger=logger,
    )
    sampler.on_eval_end(ctx, EvalResult(0, 1.0, 1))
    logger.close()
    assert sampler.evals_seen == 0
    assert (tmp_path / "m.jsonl").read_text() == ""


def test_an_evaluation_cut_short_by_a_stop_is_dropped() -> None:
    from ml_playground.training.evaluation import evaluate_split

    model = tiny_model()
    tokens = CharTokenizer.train(TEXT).encode_array(TEXT * 40).astype(np.uint16)
    asked: list[int] = []

    def interrupted() -> bool:
        asked.append(1)
        return len(asked) > 2  # a signal arrives during the third batch's wait

    def evaluate_val() -> tuple[float, int]:
        result = evaluate_split(
            model,
            tokens,
            block_size=16,
            batch_size=4,
            precision=Precision(torch.device("cpu"), torch.float32),
            interrupted=interrupted,
        )
        return result.loss, result.tokens

    results: list[EvalResult] = []

    class Collect(EarlyStoppingHook):
        def on_eval_end(self, ctx: TrainingContext, result: EvalResult) -> None:
            results.append(result)

    hook = EvaluationHook(interval=1, evaluate_val=evaluate_val)
    ctx = context(model, step=1)
    ctx.hooks = [Collect(patience=None, target_val_loss=None)]
    model.train()
    hook.on_step_end(ctx)
    assert results == []
    assert len(asked) == 3  # it stopped at the first batch after the signal, not at the end of the split
    assert model.training


def test_hooks_are_called_by_phase_then_in_the_given_order() -> None:
    """A checkpoint stores every hook's state, so it must hear an evaluation after the hooks that change it."""
    heard: list[str] = []

    class Named(Hook):
        def __init__(self, name: str, phase: HookPhase) -> None:
            self.name, self.phase = name, phase

        def on_eval_end(self, ctx: TrainingContext, result: EvalResult) -> None:
            heard.append(self.name)

    given = [
        Named("log", HookPhase.REPORT),
        Named("checkpoint", HookPhase.PERSIST),
        Named("early stop", HookPhase.OBSERVE),
        Named("sample", HookPhase.OBSERVE),
    ]
    assert (EarlyStoppingHook.phase, CheckpointHook.phase, LoggingHook.phase) == tuple(HookPhase)
    assert [hook.name for hook in in_phase_order(given)] == ["early stop", "sample", "checkpoint", "log"]  # type: ignore[attr-defined]
    model = torch.nn.Linear(2, 2)
    ctx = TrainingContext(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        ema=None,
        state=LoopState(),
        max_iters=1,
        hooks=given,
    )
    ctx.emit_eval(EvalResult(step=0, val_loss=1.0, val_tokens=1))
    assert heard == ["early stop", "sample", "checkpoint", "log"]
