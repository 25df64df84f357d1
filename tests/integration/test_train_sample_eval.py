"""prepare -> train -> sample -> eval on a slice of Tiny Shakespeare, in process, all real parts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ml_playground.commands.train import train
from ml_playground.core.errors import CheckpointError, ConfigError, DataError, TrainingDivergedError, UserError
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.evaluation.runner import evaluate_checkpoint
from ml_playground.sampling.runner import sample
from ml_playground.training.checkpointing.service import CheckpointService
from ml_playground.training.run_lock import RunLock
from tests.conftest import ConfigFactory

pytestmark = pytest.mark.integration


def quiet_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)


def test_tiny_run_learns_and_writes_every_output(tiny_config: ConfigFactory) -> None:
    config = tiny_config(
        "train.max_iters=60", "train.optim.learning_rate=3e-3", "train.sample_during_training.every_evals=3"
    )
    prepare(config.prepare)
    console = quiet_console()
    result = train(config, console=console)
    out = config.train.out_dir
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 10, 20, 30, 40, 50, 60]  # step 0: the untrained reference
    val = [r["val_loss"] for r in evals]
    assert val[-1] < val[0] - 0.3
    assert result.step == 60
    assert result.best_val_loss == min(val[1:])
    assert result.resumed_from_step is None
    assert (out / "loss.png").stat().st_size > 1000
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert {"loss/train", "loss/val", "lr", "tokens_per_second", "grad_norm"} <= set(events.Tags()["scalars"])
    assert "sample" in console.file.getvalue()  # type: ignore[attr-defined]
    best = CheckpointService(out).pointer_info("best")
    assert best is not None
    assert best["val_loss"] == min(val)

    texts: list[str] = []
    samples = sample(config, emit=texts.append)
    assert len(samples) == 1
    assert samples[0].path.read_text() == samples[0].text
    assert samples[0].text == "".join(texts).removesuffix("\n---------------\n")
    assert len(samples[0].text) == 1 + 40  # char-level: prompt "\n" plus 40 new characters

    report = evaluate_checkpoint(config)
    assert report.step == best["step"]
    assert report.val_loss == pytest.approx(best["val_loss"], abs=1e-6)
    assert report.tokens == 3000 - 1
    assert set(report.to_dict()) == {
        *("val_loss", "tokens", "checkpoint", "step"),
        *("bits_per_byte", "bytes", "characters", "data", "seconds"),
    }
    assert report.bytes == report.tokens  # Tiny Shakespeare is ASCII


def test_resume_continues_and_finished_runs_do_nothing(tiny_config: ConfigFactory) -> None:
    config = tiny_config("train.max_iters=20")
    prepare(config.prepare)
    train(config, console=quiet_console())
    longer = tiny_config("train.max_iters=30")
    console = quiet_console()
    result = train(longer, console=console)
    assert result.resumed_from_step == 20
    assert result.step == 30
    assert "resuming from" in console.file.getvalue()  # type: ignore[attr-defined]
    again = quiet_console()
    assert train(longer, console=again).step == 30
    assert "already trained to step 30" in again.file.getvalue()  # type: ignore[attr-defined]


def test_fresh_moves_the_old_run_aside(tiny_config: ConfigFactory) -> None:
    config = tiny_config("train.max_iters=10")
    prepare(config.prepare)
    train(config, console=quiet_console())
    result = train(config, fresh=True, console=quiet_console())
    assert result.resumed_from_step is None
    moved = [p for p in config.train.out_dir.parent.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1
    assert (moved[0] / "checkpoints" / "last.json").is_file()
    train(config, fresh=True, console=quiet_console())
    assert len([p for p in config.train.out_dir.parent.iterdir() if p.name.startswith("run.old-")]) == 2


@pytest.mark.parametrize(
    ("override", "refusal"),
    [
        ("train.data.batch_size=7", r"a global batch of 4 sequences \(train\.data\.batch_size x processes; now 7\)"),
        ("train.data.grad_accum_steps=2", r"train\.data\.grad_accum_steps = 1 \(now 2\)"),
    ],
)
def test_resume_with_other_batches_is_refused_unless_allowed(
    tiny_config: ConfigFactory, override: str, refusal: str
) -> None:
    config = tiny_config("train.max_iters=10")
    assert config.train.data.batch_size == 4  # what tiny_config trains with, read by the first case
    prepare(config.prepare)
    train(config, console=quiet_console())
    with pytest.raises(CheckpointError, match="was trained with " + refusal) as info:
        train(tiny_config("train.max_iters=15", override), console=quiet_console())
    assert "allow_changed_batches" in str(info.value)
    assert "\n" not in str(info.value)
    result = train(
        tiny_config("train.max_iters=15", override, "train.data.allow_changed_batches=true"), console=quiet_console()
    )
    assert (result.resumed_from_step, result.step) == (10, 15)


def test_resume_with_another_model_shape_is_refused(tiny_config: ConfigFactory) -> None:
    config = tiny_config("train.max_iters=10")
    prepare(config.prepare)
    train(config, console=quiet_console())
    with pytest.raises(CheckpointError) as info:
        train(tiny_config("train.model.n_layer=3", "train.model.n_embd=48"), console=quiet_console())
    message = str(info.value)
    assert "n_embd: 32 in checkpoint, 48 now" in message
    assert "n_layer: 2 in checkpoint, 3 now" in message
    assert "--fresh" in message


def test_corrupted_last_checkpoint_resumes_from_the_newest_intact(tiny_config: ConfigFactory) -> None:
    config = tiny_config("train.max_iters=20", "train.eval_interval=100", "train.checkpoint.keep_last=3")
    prepare(config.prepare)
    train(config, console=quiet_console())
    service = CheckpointService(config.train.out_dir)
    (service.resolve("last") / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match=r"step_00000020/model.safetensors: truncated"):
        sample(tiny_config("sample.checkpoint='last'"), emit=lambda _: None)
    console = quiet_console()
    result = train(tiny_config("train.max_iters=25", "train.eval_interval=100"), console=console)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert "skipping damaged checkpoint" in output
    assert "step_00000020/model.safetensors: truncated" in output
    assert result.resumed_from_step == 10
    assert result.step == 25


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config: ConfigFactory) -> None:
    config = tiny_config("train.max_iters=10")
    prepare(config.prepare)
    train(config, console=quiet_console())
    exploding = tiny_config("train.max_iters=200", "train.optim.learning_rate=1e6", "train.optim.grad_clip=0.0")
    with pytest.raises(TrainingDivergedError, match=r"loss became (nan|inf) at step \d+; stopped"):
        train(exploding, console=quiet_console())
    assert (
        CheckpointService(config.train.out_dir).load(CheckpointService(config.train.out_dir).resolve("last")).step == 10
    )


def test_a_second_run_on_the_same_out_dir_is_refused(tiny_config: ConfigFactory) -> None:
    config = tiny_config()
    prepare(config.prepare)
    with RunLock(config.train.out_dir), pytest.raises(UserError, match="another run"):
        train(config, console=quiet_console())


def test_block_size_larger_than_the_validation_split(tiny_config: ConfigFactory) -> None:
    config = tiny_config("train.model.block_size=4000")
    prepare(config.prepare)
    with pytest.raises(DataError, match="block_size 4000 is larger than the validation split"):
        train(config, console=quiet_console())


def test_sample_options_ema_weights_prompt_file_and_errors(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    config = tiny_config("train.max_iters=10", "train.model.ema.enabled=true")
    prepare(config.prepare)
    train(config, console=quiet_console())
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("ROMEO:")
    samples = sample(
        tiny_config(
            "sample.weights='ema'",
            f"sample.prompt_file='{prompt}'",
            "sample.num_samples=2",
            "sample.top_p=0.9",
            "sample.checkpoint='last'",
        ),
        emit=lambda _: None,
    )
    assert [s.text[:6] for s in samples] == ["ROMEO:", "ROMEO:"]
    assert samples[0].text != samples[1].text
    with pytest.raises(ConfigError, match=r"sample.prompt: prompt cannot be encoded: characters not in the vocabulary"):
        sample(tiny_config("sample.prompt='€'"), emit=lambda _: None)
    with pytest.raises(ConfigError, match="prompt is empty"):
        sample(tiny_config("sample.prompt=''"), emit=lambda _: None)
    with pytest.raises(ConfigError, match="cannot read prompt file"):
        sample(tiny_config(f"sample.prompt_file='{tmp_path / 'missing.txt'}'"), emit=lambda _: None)
    plain = tiny_config("train.max_iters=10", f"train.out_dir='{tmp_path / 'plain'}'")
    train(plain, console=quiet_console())
    with pytest.raises(CheckpointError, match="has no EMA weights"):
        sample(tiny_config(f"train.out_dir='{tmp_path / 'plain'}'", "sample.weights='ema'"), emit=lambda _: None)


def test_sampling_and_eval_before_any_checkpoint(tiny_config: ConfigFactory) -> None:
    config = tiny_config()
    prepare(config.prepare)
    with pytest.raises(CheckpointError, match="no 'best' checkpoint yet"):
        sample(config, emit=lambda _: None)
    with pytest.raises(CheckpointError, match="no 'best' checkpoint yet"):
        evaluate_checkpoint(config)


def test_eval_refuses_a_checkpoint_from_another_dataset(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    config = tiny_config("train.max_iters=10")
    prepare(config.prepare)
    train(config, console=quiet_console())
    other = tmp_path / "other.txt"
    other.write_text(config.prepare.dataset_dir.parent.joinpath("corpus.txt").read_text()[::-1])
    moved = tiny_config(f"prepare.input_path='{other}'", f"prepare.dataset_dir='{tmp_path / 'other_ds'}'")
    prepare(moved.prepare)
    with pytest.raises(CheckpointError, match="was trained on another dataset"):
        evaluate_checkpoint(moved)


def test_compile_true_trains_through_the_compiled_model(tiny_config: ConfigFactory) -> None:
    """This PyTorch compiles on the CPU, so the compiled path must be the one that ran (Dynamo counts the
    graphs it compiled); the eager fallback is tested with a failing compiler in tests/unit/commands/test_train.py."""
    from torch._dynamo.utils import counters

    config = tiny_config("train.max_iters=4", "train.model.compile=true", "train.eval_interval=4")
    prepare(config.prepare)
    compiled_before = counters["stats"]["unique_graphs"]
    result = train(config, console=quiet_console())
    assert result.step == 4
    assert result.last_val_loss is not None
    assert counters["stats"]["unique_graphs"] > compiled_before


def test_linear_kernel_and_optimizer_settings_reach_the_training(tiny_config: ConfigFactory) -> None:
    from ml_playground.families.gpt.kernel_choice import Workload, pick_linear_kernel
    from ml_playground.families.gpt.model import Linear
    from ml_playground.training.context import Hook, TrainingContext
    from ml_playground.training.optim import MuonWithAdamW

    seen: dict[str, object] = {}

    class Inspect(Hook):
        def on_train_start(self, ctx: TrainingContext) -> None:
            seen["kernels"] = {m.kernel for m in ctx.model.modules() if isinstance(m, Linear)}
            seen["optimizer"] = type(ctx.optimizer)

    config = tiny_config("train.max_iters=20", "train.optim.name='muon'")
    prepare(config.prepare)
    result = train(config, console=quiet_console(), extra_hooks=[Inspect()])
    rows = config.train.data.batch_size * config.train.sequence_length
    width = config.train.model.n_embd  # type: ignore[union-attr]
    measured = pick_linear_kernel("auto", torch.device("cpu"), Workload(width, rows, training=True))
    assert seen == {"kernels": {measured}, "optimizer": MuonWithAdamW}  # what auto measured on this machine
    assert result.best_val_loss is not None
    assert result.best_val_loss < 3.8  # uniform over the ~60 characters would be 4.1
    train(tiny_config("train.max_iters=2", "train.model.linear_kernel='aten'"), fresh=True, console=quiet_console(),
          extra_hooks=[Inspect()])  # fmt: skip
    assert seen == {"kernels": {"aten"}, "optimizer": torch.optim.AdamW}


def test_the_memory_estimate_is_printed_and_a_run_that_cannot_fit_is_refused(tiny_config: ConfigFactory) -> None:
    from ml_playground.core.errors import ConfigError

    config = tiny_config("train.max_iters=2")
    prepare(config.prepare)
    said = io.StringIO()
    train(config, console=Console(file=said, width=300))
    line = next(line for line in said.getvalue().splitlines() if line.startswith("memory estimate: "))
    assert "GiB available system memory)" in line
    with pytest.raises(
        ConfigError, match=r"but only .* GiB \(available system memory\); lower train\.data\.batch_size"
    ):
        train(tiny_config("train.data.batch_size=100000000"), fresh=True, console=quiet_console())
    assert not (config.train.out_dir / "checkpoints" / "step_00000001").exists()
