"""LoRA fine-tuning against what a user would run instead: Hugging Face ``Trainer`` with PEFT, same base.

Both sides train the same base (SmolLM2-135M-Instruct from the ``make models`` GGUF, converted once to a
Hugging Face folder) with the same LoRA rank, alpha, target modules, block, batch, dtype, AdamW and
learning rate, on the same prepared windows (``bundestag_smollm2_lora``'s data: speeches with their
speaker line kept out of the loss). Each side runs in a process of its own, so that its peak memory
(``VmHWM``) is its own: ours is ``ml_playground train`` itself, the peer ``Trainer.train()`` over our
``BatchSampler``'s windows, its labels the same targets. The figure is the median step after two
warm-up steps; a step is forward, backward, gradient clipping and the optimizer on both sides. Ours runs
the experiment as shipped, its decoder layers compiled for training (``compile = true``; the compile
falls in the warm-up steps); the peer runs eager, as ``Trainer`` does unless told ``torch_compile``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ml_playground.bench.harness import BenchResult
from ml_playground.bench.process_benchmarks import peak_rss_bytes, run_train
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import ExperimentConfig, HfLoraModelConfig
from ml_playground.core.precision_choice import cpu_autocast_dtype
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.families.base import family_settings

EXPERIMENT = "bundestag_smollm2_lora"
WARMUP_STEPS = 2


@dataclass(frozen=True)
class LoraBenchSizes:
    steps: int = 12
    base_model: str | None = None  # None: the experiment's own (the make models GGUF)
    block_size: int | None = None  # None: the experiment's own (256)
    dtypes: tuple[str, ...] | None = None  # None: float32 and, where ``dtype = "auto"`` picks it here, bfloat16
    compile: bool | None = None  # None: the experiment's own (compiled layers); --quick trains its tiny model eager


def bench_overrides(bundestag: Path, dataset_dir: Path, sizes: LoraBenchSizes) -> list[str]:
    """The ``--set`` overrides both sides read the experiment with: its data from ``bundestag``, our sizes.
    Paths are absolute: ``train`` runs in the bench's work folder."""
    config, settings = _experiment([])
    base_model = sizes.base_model or settings.base_model
    base_model = str(Path(base_model).resolve()) if Path(base_model).exists() else base_model
    overrides = [f"prepare.input_path='{bundestag.resolve()}'", f"prepare.dataset_dir='{dataset_dir.resolve()}'"]
    cache = config.prepare.cache_dir.expanduser().resolve()
    overrides += [f"prepare.cache_dir='{cache}'", f"train.model.base_model='{base_model}'"]
    overrides += [f"train.model.block_size={sizes.block_size}"] if sizes.block_size else []
    overrides += [f"train.model.compile={str(sizes.compile).lower()}"] if sizes.compile is not None else []
    return overrides


def _experiment(overrides: Sequence[str]) -> tuple[ExperimentConfig, HfLoraModelConfig]:
    config = load_config(experiment_config_path(EXPERIMENT), list(overrides))
    return config, family_settings(config, HfLoraModelConfig)


def hf_trainer_step_seconds(overrides: Sequence[str], steps: int, dtype: str) -> list[float]:
    """Seconds of each step of ``transformers.Trainer`` + PEFT LoRA, with the experiment's settings."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from ml_playground.data_pipeline.batches import IGNORE_INDEX, BatchSampler, open_dataset
    from ml_playground.families.hf_lora.hub import load_pretrained_model
    from ml_playground.families.hf_lora.lora import apply_lora

    config, settings = _experiment(overrides)
    tc = config.train
    base = load_pretrained_model(
        settings.base_model, revision=settings.revision, dtype=torch.float32, cache_dir=config.prepare.cache_dir
    )
    model = apply_lora(base, settings.lora)
    dataset = open_dataset(config.prepare.dataset_dir)
    batch_size = tc.data.batch_size
    sampler = BatchSampler(
        dataset.train, block_size=settings.block_size, batch_size=batch_size, seed=tc.seed,
        mask=dataset.train_mask, index=dataset.train_index,
    )  # fmt: skip
    rows: list[dict[str, torch.Tensor]] = []
    for step in range(1, steps + 1):
        x, y = sampler.batch(step)
        labels = torch.full_like(x, IGNORE_INDEX)  # transformers shifts labels itself: label t is target t - 1
        labels[:, 1:] = torch.where(y[:, :-1] != IGNORE_INDEX, x[:, 1:], IGNORE_INDEX)
        rows += [{"input_ids": x[i], "labels": labels[i]} for i in range(len(x))]

    class Windows(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return rows[i]

    seconds: list[float] = []

    class StepTimer(TrainerCallback):
        started = 0.0

        def on_step_begin(self, *args: object, **kwargs: object) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, *args: object, **kwargs: object) -> None:
            seconds.append(time.perf_counter() - self.started)

    with tempfile.TemporaryDirectory(prefix="ml_playground-hf-trainer-") as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps, use_cpu=True,
            bf16=dtype == "bfloat16", learning_rate=tc.optim.learning_rate, weight_decay=tc.optim.weight_decay,
            adam_beta2=tc.optim.beta2, max_grad_norm=tc.optim.grad_clip, optim="adamw_torch",
            lr_scheduler_type="cosine", warmup_steps=tc.schedule.warmup_iters, report_to=[], save_strategy="no",
            logging_strategy="no", dataloader_num_workers=0, seed=tc.seed,
        )  # fmt: skip
        Trainer(model=model, args=args, train_dataset=Windows(), callbacks=[StepTimer()]).train()
    return seconds


def _median_after_warmup(values: Sequence[float]) -> float:
    return statistics.median(values[WARMUP_STEPS:] if len(values) > WARMUP_STEPS else values)


def _ours(overrides: Sequence[str], work_dir: Path, steps: int, dtype: str) -> tuple[float, int]:
    """``ml_playground train`` on the prepared windows: (median seconds a step, peak RSS bytes)."""
    out_dir = work_dir / f"ours-{dtype}"
    run = [
        *overrides, f"train.out_dir='{out_dir}'", f"train.max_iters={steps}", f"train.dtype='{dtype}'",
        "train.log_interval=1", "train.eval_at_start=false", f"train.eval_interval={steps}",
        "train.eval_max_tokens=64", f"train.checkpoint.interval={steps}", "train.model.save_merged_on_best=false",
    ]  # fmt: skip
    outcome = run_train([EXPERIMENT, *(arg for o in run for arg in ("--set", o))], work_dir)
    logged = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text("utf-8").splitlines()]
    elapsed = [row["elapsed_s"] for row in logged if "train_loss" in row]
    per_step = [later - earlier for earlier, later in zip([0.0, *elapsed], elapsed, strict=False)]
    return _median_after_warmup(per_step), outcome.max_rss_bytes


def _peer(overrides: Sequence[str], work_dir: Path, steps: int, dtype: str) -> tuple[float, int]:
    """The peer in a child process: (median seconds a step, peak RSS bytes)."""
    result = work_dir / f"peer-{dtype}.json"
    command = [
        sys.executable, "-m", "ml_playground.bench.lora_benchmarks", "--steps", str(steps), "--dtype", dtype,
        "--out", str(result), *(arg for o in overrides for arg in ("--set", o)),
    ]  # fmt: skip
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, cwd=work_dir, stdout=subprocess.DEVNULL, stderr=errors, text=True)
        peak = peak_rss_bytes(process)
        errors.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"the HF Trainer peer failed ({process.returncode}): {errors.read().strip()[-500:]}")
    return _median_after_warmup(json.loads(result.read_text("utf-8"))), peak


def lora_vs_hf_trainer(bundestag: Path, work_dir: Path, sizes: LoraBenchSizes | None = None) -> list[BenchResult]:
    """Rows for float32 (the issue's setting) and, where ``dtype = "auto"`` picks it on this CPU, bfloat16."""
    sizes = sizes or LoraBenchSizes()
    overrides = bench_overrides(bundestag, work_dir / "lora-dataset", sizes)
    config, settings = _experiment(overrides)
    prepare(config.prepare)
    dtypes = list(sizes.dtypes or ("float32",))
    if sizes.dtypes is None and cpu_autocast_dtype() == torch.bfloat16:
        dtypes.append("bfloat16")
    tokens = config.train.data.batch_size * settings.block_size
    shape = (
        f"{Path(settings.base_model).name}, LoRA r {settings.lora.r} on {len(settings.lora.target_modules)} projections"
    )
    results = []
    for dtype in dtypes:
        ours_s, ours_rss = _ours(overrides, work_dir, sizes.steps, dtype)
        peer_s, peer_rss = _peer(overrides, work_dir, sizes.steps, dtype)
        results += [
            BenchResult(
                f"LoRA train tokens/s vs HF Trainer + PEFT, {dtype}", tokens / ours_s, "tokens/s",
                f"transformers Trainer + PEFT, {shape}, batch {config.train.data.batch_size}", tokens / peer_s, 1.3,
                note=f"median step of {sizes.steps}, after {WARMUP_STEPS}; each side in its own process"
                + ("; ours compiles its decoder layers (in the warm-up), the peer runs eager (Trainer's default)"
                   if settings.compile else ""),
            ),
            BenchResult(
                f"LoRA training peak RSS vs HF Trainer + PEFT, {dtype}", ours_rss / 2**20, "MiB",
                "transformers Trainer + PEFT, whole process", peer_rss / 2**20, 1.0, higher_is_better=False,
            ),
        ]  # fmt: skip
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The HF Trainer + PEFT side of the LoRA benchmark")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args(argv)
    seconds = hf_trainer_step_seconds(args.overrides, args.steps, args.dtype)
    args.out.write_text(json.dumps(seconds), "utf-8")


if __name__ == "__main__":
    main()
