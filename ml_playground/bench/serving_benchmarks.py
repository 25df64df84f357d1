"""``serve`` against ``sample``: tokens per second through the real HTTP server, 1, 8 and 32 clients at once.

The peer is the same model decoded in process the way ``sample`` does it (``stream_decode``, one
stream), so the ratio is what the server gives: with one client what HTTP and server-sent events
cost, with many what continuous batching gains (one forward pass a step for every stream). The
time to the first token under 8 clients is printed as p50/p95. The server is a process of its own,
wired as ``serve`` wires it (the model decoded on the thread that built it, uvicorn on a loopback
port beside it); each client is a process of its own, as real clients are, so parsing their streams
does not take the server's interpreter lock, and the peer decodes in this process.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch

from ml_playground.bench.harness import BenchResult
from ml_playground.bench.http_client import client, stream
from ml_playground.bench.model_benchmarks import BenchSizes
from ml_playground.configuration.models import ExperimentConfig, PrepareConfig, TrainConfig
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.core.tokenizer import CharTokenizer
from ml_playground.families.base import InferenceModel
from ml_playground.families.gpt.batched import BatchedDecoder
from ml_playground.families.gpt.generation import generate_stream
from ml_playground.families.gpt.kernel_choice import Workload, pick_linear_kernel
from ml_playground.families.gpt.model import GPT, GPTConfig
from ml_playground.sampling.runner import stream_decode
from ml_playground.serving.app import Served
from ml_playground.serving.engine import Engine
from ml_playground.serving.server import serving_process

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\n"


def bench_model(sizes: BenchSizes) -> InferenceModel:
    """A GPT of the bench's shape with random weights: tokens/s does not depend on what it learned."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer(sorted(set(ALPHABET)))
    n_layer, n_head, n_embd = sizes.sample_shape
    config = GPTConfig(tokenizer.vocab_size, sizes.sample_block_size, n_layer, n_head, n_embd)
    decoding = Workload(config.n_embd, rows=1, training=False)
    gpt = GPT(config).use_linear_kernel(pick_linear_kernel("auto", torch.device("cpu"), decoding)).eval()
    return InferenceModel(
        module=gpt,
        tokenizer=tokenizer,
        context_length=config.block_size,
        stream=lambda prompt, params: generate_stream(gpt, prompt, params),
        step=0,
        checkpoint="random weights",
        device=torch.device("cpu"),
        batch_decoder=lambda rows: BatchedDecoder(gpt, rows),
    )


def bench_served(sizes: BenchSizes, clients: int) -> Served:  # pragma: no cover (runs in the server's process)
    """The bench model behind the server, its engine decoding on the thread that built it (``run_served``)."""
    model = bench_model(sizes)
    config = ExperimentConfig(
        prepare=PrepareConfig(input_path="-", dataset_dir=Path("-")),
        train=TrainConfig(out_dir=Path("-")),
    )
    return Served("bench", config, model, Engine(model, max_concurrent=clients, queue_size=clients, own_thread=False))


def serving(sizes: BenchSizes) -> list[BenchResult]:
    model = bench_model(sizes)
    n_layer, _, n_embd = sizes.sample_shape
    tokens = min(200, sizes.sample_new_tokens)
    prompt = model.tokenizer.encode("ROMEO:")

    def in_process() -> float:
        started = time.perf_counter()
        stream_decode(model, prompt, SamplingParams(max_new_tokens=tokens, temperature=1.0, seed=1), lambda _: None)
        return tokens / (time.perf_counter() - started)

    results = []
    with serving_process(partial(bench_served, sizes, max(sizes.serve_clients))) as url:
        stream(url, tokens, 0)  # warm-up
        in_process()
        for clients in sizes.serve_clients:
            served_rates, peer_rates = [], []
            firsts: list[float] = []
            with ProcessPoolExecutor(max_workers=clients, mp_context=multiprocessing.get_context("spawn")) as pool:
                list(pool.map(client, [url] * clients, [1] * clients, range(clients)))  # the processes start
                for repeat in range(3):
                    peer_rates.append(in_process())
                    seeds = range(repeat * clients, (repeat + 1) * clients)
                    started = time.perf_counter()
                    done = list(pool.map(client, [url] * clients, [tokens] * clients, seeds))
                    served_rates.append(sum(count for count, _ in done) / (time.perf_counter() - started))
                    firsts.extend(first for _, first in done)
            served_rates.sort()
            peer_rates.sort()
            firsts.sort()
            ttft = f"; first token p50 {percentile(firsts, 50):.3f} s, p95 {percentile(firsts, 95):.3f} s"
            results.append(
                BenchResult(
                    name=f"serve, {clients} client{'s' if clients > 1 else ''} (aggregate)",
                    figure=served_rates[1],
                    unit="tokens/s",
                    peer="sample in process, one stream, same model",
                    peer_figure=peer_rates[1],
                    target={1: 0.7, 8: 4.0}.get(clients),
                    note=f"{n_layer}x{n_embd}, {tokens} tokens a client; continuous batching"
                    + (ttft if clients > 1 else ""),
                )
            )
    return results


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile of sorted values (nearest rank)."""
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]
