"""``make gpu-check``: the speedrun, a LoRA step and generation on a CUDA device, with tokens/s and MFU.

Written before a CUDA machine was at hand, so that the first one answers three questions at once:
- the Shakespeare speedrun (``speedrun.toml``) in bfloat16 with ``torch.compile``: training tokens/s and
  model FLOP utilisation (6 x parameters + attention per token);
- a LoRA step on SmolLM2-135M-Instruct (``bundestag_smollm2_lora``, the ``make models`` GGUF) in bfloat16:
  tokens/s and MFU (4 x base parameters: forward and input gradients, the base is frozen; 6 x adapters);
- generation from both checkpoints as ``sample`` runs it (``stream_decode``, one stream): tokens/s, and
  memory-bandwidth utilisation (the weights read once per token against the GPU's bandwidth).

MFU is given against the GPU's dense bfloat16 peak from its datasheet (where the name is known) and
against the bfloat16 matrix-product peak measured on the device here. Everything runs through the real
commands' code: ``prepare`` in this process (what the bench does), ``train`` in child processes, ``sample``'s
decode path in this one.

``--device cpu --quick`` rehearses the same path on the CPU with a few steps and no compile (other tests
compile): the tests run it, so the script works before a GPU does. Without CUDA (and without
``--device cpu``) it stops with one line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ml_playground.bench.harness import BenchResult, machine_info, render_machine, render_table, write_results
from ml_playground.bench.process_benchmarks import run_train
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import HfLoraModelConfig
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.families.base import InferenceModel, family_settings

SPEEDRUN_CONFIG = experiment_config_path("shakespeare").with_name("speedrun.toml")
LORA_EXPERIMENT = "bundestag_smollm2_lora"

# Dense bfloat16 tensor-core peak (FLOP/s) and memory bandwidth (bytes/s) from the vendors' datasheets, by a
# part of the name torch.cuda.get_device_name reports; the first match wins, so longer names come first.
DATASHEET: tuple[tuple[str, float, float], ...] = (
    ("H200", 989e12, 4.8e12),
    ("H100 PCIe", 756e12, 2.0e12),
    ("H100", 989e12, 3.35e12),
    ("A100-SXM4-80GB", 312e12, 2.04e12),
    ("A100", 312e12, 1.56e12),
    ("L40S", 362e12, 0.864e12),
    ("L4", 121e12, 0.3e12),
    ("A10G", 70e12, 0.6e12),
    ("RTX 4090", 165e12, 1.01e12),
)


def datasheet(device_name: str) -> tuple[float, float] | None:
    """(bfloat16 dense FLOP/s, bytes/s) for a known GPU, else None."""
    for part, flops, bandwidth in DATASHEET:
        if part in device_name:
            return flops, bandwidth
    return None


def measured_matmul_peak(device: torch.device, size: int, repeats: int = 5) -> float:
    """FLOP/s of a ``size``-square bfloat16 product on ``device`` (the best of ``repeats``)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(repeats + 1):
        synchronize(device)
        started = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Runner = Callable[[list[str], Path], object]
"""(``train`` arguments, the folder to run in): trains, raises on failure. The bench's ``run_train`` (a child
process, so each run gets a fresh device context) unless told otherwise."""


def sets(overrides: Sequence[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


def logged_tokens_per_second(metrics: Path) -> float:
    """The median of the logged training rates after the first interval (which holds the compile)."""
    rates = [
        row["tokens_per_second"]
        for row in map(json.loads, metrics.read_text("utf-8").splitlines())
        if "train_loss" in row and "tokens_per_second" in row
    ]
    if not rates:
        raise RuntimeError(f"no training rate was logged in {metrics}")
    return float(statistics.median(rates[1:] if len(rates) > 1 else rates))


def last_checkpoint(config_path: Path, overrides: Sequence[str]) -> InferenceModel:
    """The run's last checkpoint, loaded as ``sample`` loads it."""
    from ml_playground.sampling.runner import load_model

    return load_model(load_config(config_path, list(overrides)), "last")


def generation_rate(model: InferenceModel, tokens: int) -> tuple[float, int]:
    """(tokens/s of one greedy stream decoded as ``sample`` decodes it, bytes of weights read per token)."""
    from ml_playground.sampling.runner import stream_decode

    weights = sum(p.numel() * p.element_size() for p in model.module.parameters())
    prompt = model.tokenizer.encode("\n") or [0]
    stream_decode(model, prompt, SamplingParams(max_new_tokens=4, temperature=0.0), lambda _: None)  # warm-up
    synchronize(model.device)
    started = time.perf_counter()
    stream_decode(model, prompt, SamplingParams(max_new_tokens=tokens, temperature=0.0), lambda _: None, frozenset())
    synchronize(model.device)
    return tokens / (time.perf_counter() - started), weights


def mfu_note(flops: float, peaks: dict[str, float]) -> str:
    return ", ".join(f"MFU {flops / peak:.1%} of the {name}" for name, peak in peaks.items())


def speedrun_rows(
    shakespeare: Path,
    work_dir: Path,
    device: str,
    quick: bool,
    peaks: dict[str, float],
    bandwidth: float | None,
    run: Runner = run_train,
) -> list[BenchResult]:
    dataset, out_dir = work_dir / "shakespeare", work_dir / "speedrun"
    overrides = [f"prepare.input_path='{shakespeare.resolve()}'", f"prepare.dataset_dir='{dataset}'"]
    prepare(load_config(SPEEDRUN_CONFIG, overrides).prepare)
    overrides += [
        f"train.out_dir='{out_dir}'", f"train.device='{device}'", "train.dtype='bfloat16'",
        f"train.model.compile={'false' if quick else 'true'}", "train.log_interval=10",
    ]  # fmt: skip
    overrides += ["train.max_iters=12", "train.eval_interval=12", "train.eval_max_tokens=256"] if quick else []
    config_args = ["--config", str(SPEEDRUN_CONFIG)]
    started = time.perf_counter()
    run(["shakespeare", *config_args, *sets(overrides)], work_dir)
    wall = time.perf_counter() - started
    rate = logged_tokens_per_second(out_dir / "metrics.jsonl")
    settings = load_config(SPEEDRUN_CONFIG, overrides).train.model
    layers, width, block = (int(getattr(settings, name)) for name in ("n_layer", "n_embd", "block_size"))
    model = last_checkpoint(SPEEDRUN_CONFIG, overrides)
    total = sum(p.numel() for p in model.module.parameters())
    flops = (6 * total + 12 * layers * width * block) * rate
    tokens = 32 if quick else 500
    generated, weights = generation_rate(model, tokens)
    return [
        BenchResult(f"speedrun train, bfloat16{'' if quick else ' + compile'}", rate, "tokens/s",
            note=f"{wall:.1f} s whole process; " + mfu_note(flops, peaks)),
        BenchResult("speedrun model, generation (one stream, greedy)", generated, "tokens/s",
            note=f"{tokens} tokens; " + mbu_note(weights * generated, bandwidth)),
    ]  # fmt: skip


def lora_rows(
    bundestag: Path,
    work_dir: Path,
    device: str,
    quick: bool,
    peaks: dict[str, float],
    bandwidth: float | None,
    base_model: str | None,
    run: Runner = run_train,
) -> list[BenchResult]:
    dataset, out_dir = work_dir / "lora-dataset", work_dir / "lora"
    config = load_config(experiment_config_path(LORA_EXPERIMENT))
    overrides = [
        f"prepare.input_path='{bundestag.resolve()}'", f"prepare.dataset_dir='{dataset}'",
        f"prepare.cache_dir='{config.prepare.cache_dir.expanduser().resolve()}'",
    ]  # fmt: skip
    base = base_model or family_settings(config, HfLoraModelConfig).base_model
    overrides += [f"train.model.base_model='{Path(base).resolve() if Path(base).exists() else base}'"]
    prepare(load_config(experiment_config_path(LORA_EXPERIMENT), overrides).prepare)
    steps = 4 if quick else 30
    overrides += [
        f"train.out_dir='{out_dir}'", f"train.device='{device}'", "train.dtype='bfloat16'",
        f"train.max_iters={steps}", "train.log_interval=1", "train.eval_at_start=false",
        f"train.eval_interval={steps}", "train.eval_max_tokens=256", f"train.checkpoint.interval={steps}",
        "train.model.save_merged_on_best=false", f"train.model.compile={'false' if quick else 'true'}",
    ]  # fmt: skip
    run([LORA_EXPERIMENT, *sets(overrides)], work_dir)
    rate = logged_tokens_per_second(out_dir / "metrics.jsonl")
    model = last_checkpoint(experiment_config_path(LORA_EXPERIMENT), overrides)
    total = sum(p.numel() for p in model.module.parameters())
    adapters = sum(p.numel() for name, p in model.module.named_parameters() if "lora_" in name)
    flops = (4 * (total - adapters) + 6 * adapters) * rate
    tokens = 16 if quick else 256
    generated, weights = generation_rate(model, tokens)
    name = Path(base).name
    return [
        BenchResult(f"LoRA train ({name}), bfloat16{'' if quick else ' + compiled layers'}", rate, "tokens/s",
            note=f"median of {steps - 1} steps; " + mfu_note(flops, peaks)),
        BenchResult(f"LoRA model ({name}), generation (one stream, greedy)", generated, "tokens/s",
            note=f"{tokens} tokens; " + mbu_note(weights * generated, bandwidth)),
    ]  # fmt: skip


def mbu_note(bytes_per_second: float, bandwidth: float | None) -> str:
    read = f"weights read at {bytes_per_second / 1e9:.1f} GB/s"
    return read + (f", {bytes_per_second / bandwidth:.1%} of the datasheet bandwidth" if bandwidth else "")


def run_check(
    *,
    device: str,
    shakespeare: Path,
    bundestag: Path,
    work_dir: Path,
    quick: bool = False,
    base_model: str | None = None,
    run: Runner = run_train,
) -> tuple[dict[str, object], list[BenchResult]]:
    """The machine facts and the rows: speedrun and LoRA, each trained (by ``run``: a child process unless told
    otherwise) then sampled, on ``device``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    target = torch.device(device)
    name = torch.cuda.get_device_name(target) if target.type == "cuda" else "CPU"
    peaks = {"bfloat16 matmul peak measured here": measured_matmul_peak(target, 512 if quick else 8192)}
    sheet = datasheet(name)
    if sheet is not None:
        peaks = {"datasheet bfloat16 dense peak": sheet[0], **peaks}
    facts: dict[str, object] = {"device": name, **machine_info()}
    if target.type == "cuda":
        facts["cuda"] = torch.version.cuda
        facts["gpu_memory_gib"] = round(torch.cuda.get_device_properties(target).total_memory / 2**30, 1)
    facts.update({f"peak: {k}": f"{v / 1e12:,.1f} TFLOP/s" for k, v in peaks.items()})
    bandwidth = sheet[1] if sheet else None
    rows = speedrun_rows(shakespeare, work_dir, device, quick, peaks, bandwidth, run)
    rows += lora_rows(bundestag, work_dir, device, quick, peaks, bandwidth, base_model, run)
    return facts, rows


def render(facts: dict[str, object], rows: list[BenchResult]) -> str:
    """The bench's machine block and table, with the device and its peaks between them."""
    gpu = ", ".join(f"{key} {facts[key]}" for key in ("cuda", "gpu_memory_gib") if key in facts)
    lines = [render_machine(facts), f"device: {facts['device']}" + (f" ({gpu})" if gpu else "")]
    lines += [f"{key}: {value}" for key, value in facts.items() if key.startswith("peak: ")] + [""]
    return "\n".join([*lines, render_table(rows)])


def main(
    argv: Sequence[str] | None = None, run: Runner = run_train, has_cuda: Callable[[], bool] = torch.cuda.is_available
) -> int:
    """The command: prints the table and writes it to ``WORK_DIR/results.json``; 2 on a missing device or file."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a rehearsal of the same path)")
    parser.add_argument("--quick", action="store_true", help="a few steps and tokens: checks the script, not speed")
    parser.add_argument("--shakespeare", type=Path, default=Path("../shared/data/shakespeare/input.txt"))
    parser.add_argument("--bundestag", type=Path, default=Path("../shared/data/bundestag/19001.txt"))
    parser.add_argument("--base-model", help="the LoRA base (default: the experiment's, the make models GGUF)")
    parser.add_argument("--work-dir", type=Path, default=Path("out/gpu_check"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not has_cuda():
        cuda = torch.version.cuda or "none"
        sys.stderr.write(f"error: gpu-check needs a CUDA device; none is available here (torch {torch.__version__}, "
                         f"CUDA build {cuda}); --device cpu --quick rehearses the script\n")  # fmt: skip
        return 2
    for flag, path in (("--shakespeare", args.shakespeare), ("--bundestag", args.bundestag)):
        if not path.is_file():
            sys.stderr.write(f"error: {flag}: no such file: {path}\n")
            return 2
    facts, rows = run_check(
        device=args.device, shakespeare=args.shakespeare, bundestag=args.bundestag, work_dir=args.work_dir.resolve(),
        quick=args.quick, base_model=args.base_model, run=run,
    )  # fmt: skip
    print(render(facts, rows))
    results = args.work_dir / "results.json"
    write_results(rows, results, machine=facts)
    print(f"\nwritten to {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
