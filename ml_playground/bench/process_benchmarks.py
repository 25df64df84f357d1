"""Benchmarks that run the real CLI or the preparer: speedrun, peak memory, data preparation."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from ml_playground.bench.harness import BenchResult, median_seconds, paired_medians
from ml_playground.configuration import experiment_config_path
from ml_playground.configuration.models import PrepareConfig, TokenizerName
from ml_playground.core.tokenizer import BpeTokenizer, load_tokenizer
from ml_playground.data_pipeline.meta import TOKENIZER_DIR
from ml_playground.data_pipeline.preparer import prepare

SPEEDRUN_CONFIG = experiment_config_path("shakespeare").with_name("speedrun.toml")
QUICK_EVALUATION = ["--set", "train.eval_max_tokens=2048", "--set", "train.eval_at_start=false"]
DONE = re.compile(r"done at step (\d+) in ([0-9.]+) s")
BEST = re.compile(r"best val loss ([0-9.]+)")


@dataclass(frozen=True)
class RunOutcome:
    step: int
    seconds: float
    best_val_loss: float
    reached_target: bool
    max_rss_bytes: int
    wall_s: float = 0.0  # the whole process: start-up, data, evaluations, checkpoints


def peak_rss_bytes(process: subprocess.Popen[str], interval_s: float = 0.05) -> int:
    """The child's own peak RSS, polled until it exits.

    ``wait4``'s ``ru_maxrss`` is no use here: Linux carries the parent's peak into a forked child.
    ``VmHWM`` (Linux) is the child's exact high-water mark as of the last poll; elsewhere the
    current RSS is sampled.
    """
    peak = 0
    status_file = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            if status_file.is_file():
                for line in status_file.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
            else:  # pragma: no cover (macOS)
                peak = max(peak, psutil.Process(process.pid).memory_info().rss)
        except (OSError, psutil.Error):
            break
        time.sleep(interval_s)
    return peak


def run_train(args: list[str], work_dir: Path) -> RunOutcome:
    """``ml_playground train`` in a child process, with its peak RSS."""
    command = [sys.executable, "-m", "ml_playground", "train", *args, "--quiet", "--fresh"]
    with tempfile.TemporaryFile("w+") as output, tempfile.TemporaryFile("w+") as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=work_dir, stdout=output, stderr=errors, text=True)
        max_rss = peak_rss_bytes(process)
        wall = time.perf_counter() - started
        output.seek(0)
        errors.seek(0)
        stdout, stderr = output.read(), errors.read()
    if process.returncode != 0:
        raise RuntimeError(f"benchmark run failed ({process.returncode}): {stderr.strip()[-500:]}")
    done, best = DONE.search(stdout), BEST.search(stdout)
    if done is None or best is None:
        raise RuntimeError(f"unexpected output from train: {stdout[-500:]}")
    return RunOutcome(
        int(done.group(1)), float(done.group(2)), float(best.group(1)), "reached the target" in stdout, max_rss,
        wall,
    )  # fmt: skip


NANOGPT_RECIPE = [  # nanoGPT's README, "I only have a macbook": its CPU recipe for Shakespeare, characters
    "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1",
    "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
    "--lr_decay_iters=2000", "--dropout=0.0",
]  # fmt: skip
NANOGPT_STEP = re.compile(r"step (\d+): train loss ([0-9.]+), val loss ([0-9.]+)")


def run_nanogpt(checkout: Path, shakespeare: Path, work_dir: Path, max_iters: int = 2000) -> tuple[float, str]:
    """karpathy/nanoGPT's own ``train.py`` on its CPU recipe, in a copy of ``checkout``: wall seconds and its
    last reported (estimated) losses. Its data is prepared first by its own script, not timed."""
    copy = work_dir / "nanoGPT"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", "out*", "*.bin"))
    data = copy / "data" / "shakespeare_char"
    shutil.copyfile(shakespeare, data / "input.txt")  # present: its prepare.py downloads nothing
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True, text=True)
    recipe = [*NANOGPT_RECIPE, f"--max_iters={max_iters}", f"--lr_decay_iters={max_iters}", "--out_dir=out-bench"]
    if max_iters < 250:
        recipe += [f"--eval_interval={max_iters}"]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "train.py", *recipe], cwd=copy, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"nanoGPT's train.py failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    steps = NANOGPT_STEP.findall(done.stdout)
    last = f"step {steps[-1][0]}: val loss {steps[-1][2]} (its estimate, 20 batches)" if steps else "no evaluation"
    return wall, last


def speedrun(
    dataset_dir: Path,
    work_dir: Path,
    target: float = 1.89,
    peer_max_iters: int = 2000,
    max_steps: int | None = None,
    nanogpt: Path | None = None,
    shakespeare: Path | None = None,
) -> BenchResult:
    """Whole-process seconds of our speedrun config to whole-split validation loss <= ``target``, against
    nanoGPT's CPU recipe (batch 12, lr 1e-3, 2000 iterations): its own ``train.py`` when a ``nanogpt``
    checkout is given, else the same recipe on our loop.

    ``max_steps`` cuts our run short and evaluates on a few windows: ``bench --quick`` checks the harness."""
    short = [] if max_steps is None else ["--set", f"train.max_iters={max_steps}", *QUICK_EVALUATION]
    short += [] if max_steps is None else ["--set", f"train.eval_interval={max(1, max_steps // 2)}"]
    common = [
        "--set",
        f"prepare.dataset_dir='{dataset_dir}'",
        "--set",
        f"train.early_stopping.target_val_loss={target}",
    ]
    ours_args = ["shakespeare", "--config", str(SPEEDRUN_CONFIG), *common, *short]
    ours = run_train([*ours_args, "--set", f"train.out_dir='{work_dir / 'speedrun'}'"], work_dir)
    if nanogpt is not None and shakespeare is not None:
        peer_s, peer_last = run_nanogpt(nanogpt, shakespeare, work_dir, peer_max_iters)
        peer_text = f"karpathy/nanoGPT train.py, CPU recipe, {peer_max_iters} iters: {peer_last}"
    else:
        peer_args = ["shakespeare", *common, "--set", f"train.out_dir='{work_dir / 'nanogpt'}'"]
        peer_args += ["--set", "train.data.batch_size=12", "--set", "train.optim.learning_rate=1e-3"]
        peer_args += ["--set", f"train.max_iters={peer_max_iters}", "--set", "train.log_interval=1000"]
        peer_args += [] if max_steps is None else QUICK_EVALUATION
        peer = run_train(peer_args, work_dir)
        peer_s = peer.wall_s
        reached = "reached" if peer.reached_target else f"did not reach {target}; best {peer.best_val_loss:.4f}"
        peer_text = (
            f"nanoGPT CPU recipe on our loop (batch 12, lr 1e-3, {peer_max_iters} iters; "
            f"--nanogpt PATH runs the real one): {reached}"
        )
    return BenchResult(
        f"speedrun: process seconds to val loss <= {target}",
        ours.wall_s if ours.reached_target else float("inf"),
        "s",
        peer_text,
        peer_s,
        target=5.0,
        higher_is_better=False,
        note=f"ours: step {ours.step}, whole-split val {ours.best_val_loss:.4f}, {ours.seconds:.1f} s of it training",
    )


def default_training_rss(dataset_dir: Path, work_dir: Path, steps: int = 200, quick: bool = False) -> BenchResult:
    outcome = run_train(
        ["shakespeare", "--set", f"prepare.dataset_dir='{dataset_dir}'", "--set", f"train.out_dir='{work_dir / 'rss'}'",
         "--set", f"train.max_iters={steps}", "--set", "train.eval_interval=100", *(QUICK_EVALUATION if quick else [])],
        work_dir,
    )  # fmt: skip
    return BenchResult(
        "peak RSS, default Shakespeare training", outcome.max_rss_bytes / 2**20, "MiB", target=1024,
        higher_is_better=False, note=f"{steps} steps of the default config, whole process",
    )  # fmt: skip


def corpus_files(corpus: Path) -> list[Path]:
    return [corpus] if corpus.is_file() else sorted(corpus.rglob("*.txt"))


def nanogpt_char_prepare(corpus: Path, out_dir: Path) -> None:
    """The peer: nanoGPT's ``shakespeare_char/prepare.py`` steps on the same text (whole text in memory,
    a dict lookup per character, 90/10 split, uint16 files)."""
    data = "".join(path.read_text("utf-8-sig") for path in corpus_files(corpus))
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(data)
    train_ids = [stoi[c] for c in data[: int(n * 0.9)]]
    val_ids = [stoi[c] for c in data[int(n * 0.9) :]]
    out_dir.mkdir(parents=True, exist_ok=True)
    np.array(train_ids, dtype=np.uint16).tofile(out_dir / "train.bin")
    np.array(val_ids, dtype=np.uint16).tofile(out_dir / "val.bin")


def prepare_throughput(
    corpus: Path, work_dir: Path, tokenizer: TokenizerName, target: float | None, note: str = "", repeats: int = 3
) -> BenchResult:
    """``prepare`` in MB/s of input; for ``char`` against the nanoGPT-style prepare of the same files."""
    size = sum(p.stat().st_size for p in corpus_files(corpus))
    config = PrepareConfig(
        input_path=str(corpus), dataset_dir=work_dir / f"prep-{tokenizer}", tokenizer=tokenizer, bpe_vocab_size=4096
    )

    def ours() -> None:
        shutil.rmtree(config.dataset_dir, ignore_errors=True)
        prepare(config)

    if tokenizer != "char":
        seconds = median_seconds(ours, warmup=0, repeats=1)
        return BenchResult(
            f"prepare {tokenizer} on {corpus.name}", size / 1e6 / seconds, "MB/s",
            note=f"{size / 1e6:.1f} MB in {seconds:.2f} s, tokenizer training included{note}",
        )  # fmt: skip

    def peer() -> None:
        nanogpt_char_prepare(corpus, work_dir / "nanogpt-prep")

    ours_s, peer_s = paired_medians(ours, peer, warmup=min(1, repeats - 1), repeats=repeats)
    return BenchResult(
        f"prepare {tokenizer} on {corpus.name}", size / 1e6 / ours_s, "MB/s",
        "nanoGPT shakespeare_char/prepare.py steps on the same files", size / 1e6 / peer_s, target,
        note=f"{size / 1e6:.1f} MB; ours also parses the protocols, normalises and streams{note}",
    )  # fmt: skip


def bpe_encode_throughput(corpus: Path, work_dir: Path, target: float, repeats: int = 3) -> BenchResult:
    """Encoding with the tokenizer the BPE prepare trained, against the library's own batch call on lines."""
    text = "\n".join(p.read_text("utf-8-sig") for p in corpus_files(corpus))
    tokenizer = load_tokenizer(work_dir / "prep-bpe" / TOKENIZER_DIR)
    if not isinstance(tokenizer, BpeTokenizer):
        raise RuntimeError("the BPE prepare did not leave a BPE tokenizer")
    lines = text.splitlines(keepends=True)
    counted: list[int] = []

    def ours() -> None:
        counted[:] = [len(tokenizer.encode_array(text))]

    def peer() -> None:
        tokenizer.backend.encode_batch(lines)

    ours_s, peer_s = paired_medians(ours, peer, warmup=min(1, repeats - 1), repeats=repeats)
    size = len(text.encode())
    return BenchResult(
        f"BPE encode on {corpus.name}", size / 1e6 / ours_s, "MB/s",
        "tokenizers' Tokenizer.encode_batch on the lines, same tokenizer", size / 1e6 / peer_s, target,
        note=f"{counted[0]:,} tokens, {len(text) / counted[0]:.2f} characters/token",
    )  # fmt: skip


def prepare_memory(sample_text: str, work_dir: Path, size_mb: int, target_mib: float) -> BenchResult:
    """Peak RSS of ``prepare`` on a generated file of ``size_mb`` MB, in a child process."""
    big = work_dir / "big.txt"
    with big.open("w", encoding="utf-8") as handle:
        written = 0
        while written < size_mb * 1_000_000:
            handle.write(sample_text)
            written += len(sample_text.encode())
    command = [sys.executable, "-m", "ml_playground", "prepare", "shakespeare", "--set", f"prepare.input_path='{big}'"]
    command += ["--set", f"prepare.dataset_dir='{work_dir / 'big-dataset'}'"]
    process = subprocess.Popen(command, cwd=work_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    peak = peak_rss_bytes(process)
    big.unlink()
    return BenchResult(
        f"peak RSS, prepare char on a {size_mb} MB file", peak / 2**20, "MiB", target=target_mib,
        higher_is_better=False,
    )  # fmt: skip
