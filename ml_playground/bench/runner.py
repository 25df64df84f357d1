"""``ml_playground bench``: run every benchmark, print the table, write ``results.json``."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ml_playground.bench import lora_benchmarks, model_benchmarks, process_benchmarks, serving_benchmarks, sharding
from ml_playground.bench.harness import BenchResult, machine_info, render_machine, render_table, write_results
from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.precision_choice import cpu_autocast_dtype
from ml_playground.data_pipeline.preparer import prepare


def run_benchmarks(
    *,
    shakespeare: Path,
    bundestag: Path,
    results_path: Path,
    quick: bool = False,
    emit: Callable[[str], None] = print,
    nanogpt: Path | None = None,
) -> list[BenchResult]:
    """All benchmarks; ``quick`` runs each on tiny sizes and budgets: it checks the harness, not the speed."""
    sizes = model_benchmarks.TINY if quick else model_benchmarks.BenchSizes()
    results: list[BenchResult] = []
    machine = machine_info(model_benchmarks.matmul_peaks(sizes.matmul_size))
    emit(render_machine(machine))

    def add(found: BenchResult | list[BenchResult]) -> None:
        batch = found if isinstance(found, list) else [found]
        results.extend(batch)
        for result in batch:
            emit(
                f"{result.name}: {result.figure:,.2f} {result.unit}"
                + (f" (ratio {result.ratio:.2f})" if result.ratio else "")
            )

    add(model_benchmarks.train_throughput_vs_hf(sizes))
    if not quick and cpu_autocast_dtype() == torch.bfloat16:
        add(model_benchmarks.train_throughput_vs_hf(sizes, autocast=torch.bfloat16))
    add(model_benchmarks.linear_kernels(sizes))
    add(model_benchmarks.compile_vs_eager(sizes))
    add(model_benchmarks.sampling(sizes))
    add(model_benchmarks.scaling_table(sizes))
    add(serving_benchmarks.serving(sizes))
    with tempfile.TemporaryDirectory(prefix="ml_playground-bench-") as tmp:
        work = Path(tmp)
        dataset = work / "shakespeare"
        prepare(PrepareConfig(input_path=str(shakespeare), dataset_dir=dataset))
        target, peer_iters, rss_steps, big_mb = (4.0, 10, 5, 2) if quick else (1.89, 2000, 200, 300)
        add(
            process_benchmarks.speedrun(
                dataset,
                work,
                target=target,
                peer_max_iters=peer_iters,
                max_steps=10 if quick else None,
                nanogpt=nanogpt,
                shakespeare=shakespeare,
            )
        )
        add(process_benchmarks.default_training_rss(dataset, work, steps=rss_steps, quick=quick))
        add(sharding.sharded_memory(work, quick=quick))
        add(model_benchmarks.sampling_vs_llama_cpp(sizes, work))
        sample_text = bundestag.joinpath("19001.txt").read_text("utf-8-sig")
        add(process_benchmarks.prepare_memory(sample_text, work, big_mb, 600))
        repeats = 1 if quick else 3
        corpus = bundestag.joinpath("19001.txt") if quick else bundestag  # quick: one protocol, not all
        add(process_benchmarks.prepare_throughput(corpus, work, "char", 1.0, repeats=repeats))
        # no target: training the merges is a cost no pretrained-tokenizer peer pays; the encode row has one
        add(process_benchmarks.prepare_throughput(corpus, work, "bpe", None, "; target on the encode row"))
        add(process_benchmarks.bpe_encode_throughput(corpus, work, 1.0, repeats=repeats))
        tiny = _tiny_llama(work, sample_text) if quick else None
        add(
            lora_benchmarks.lora_vs_hf_trainer(
                bundestag.joinpath("19001.txt"),
                work,
                lora_benchmarks.LoraBenchSizes(
                    steps=3, base_model=tiny, block_size=32, dtypes=("float32",), compile=False
                )
                if quick
                else None,
            )
        )
        clients, tokens, peer_clients = ((1, 2), 8, 2) if quick else ((1, 2, 8, 32), 128, 8)
        add(serving_benchmarks.pretrained_serving(tiny, work, clients, tokens, peer_clients))
    write_results(results, results_path, machine)
    emit("")
    emit(render_machine(machine))
    emit(render_table(results))
    emit(f"\nwrote {results_path}")
    return results


def _tiny_llama(work: Path, text: str) -> str:
    """``--quick``: a tiny Llama-shaped model trained here stands in for SmolLM2 (the harness, not the speed)."""
    from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm

    return str(build_tiny_causal_lm(work / "tiny-llama", [text[:20_000]], architecture="llama"))
