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
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ml_playground.bench.harness import BenchResult
from ml_playground.bench.http_client import client, ready, stream
from ml_playground.bench.model_benchmarks import BenchSizes
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import ExperimentConfig, HfLoraModelConfig, PrepareConfig, TrainConfig
from ml_playground.core.gguf_import import hf_folder_for
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.core.tokenizer import CharTokenizer
from ml_playground.families.base import InferenceModel, family_settings
from ml_playground.families.gpt.family import decode_blocks, inference_model
from ml_playground.families.gpt.kernel_choice import Workload, pick_linear_kernel
from ml_playground.families.gpt.model import GPT, GPTConfig
from ml_playground.sampling.runner import load_model, stream_decode
from ml_playground.serving.app import Served, request_params
from ml_playground.serving.engine import Engine
from ml_playground.serving.schemas import GenerationFields
from ml_playground.serving.server import build_served, serving_process

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\n"


def bench_model(sizes: BenchSizes) -> InferenceModel:
    """A GPT of the bench's shape with random weights: tokens/s does not depend on what it learned."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer(sorted(set(ALPHABET)))
    n_layer, n_head, n_embd = sizes.sample_shape
    config = GPTConfig(tokenizer.vocab_size, sizes.sample_block_size, n_layer, n_head, n_embd)
    decoding = Workload(config.n_embd, rows=1, training=False)
    gpt = GPT(config).use_linear_kernel(pick_linear_kernel("auto", torch.device("cpu"), decoding)).eval()
    gpt.use_decode_blocks(decode_blocks(gpt, "auto"))
    return inference_model(gpt, tokenizer, torch.device("cpu"))


def bench_config() -> ExperimentConfig:
    """The settings the bench model is served with: the defaults (its sampling too)."""
    return ExperimentConfig(
        prepare=PrepareConfig(input_path="-", dataset_dir=Path("-")), train=TrainConfig(out_dir=Path("-"))
    )


def bench_served(sizes: BenchSizes, clients: int) -> Served:  # pragma: no cover (runs in the server's process)
    """The bench model behind the server, its engine decoding on the thread that built it (``run_served``)."""
    model = bench_model(sizes)
    return Served(
        "bench", bench_config(), model, Engine(model, max_concurrent=clients, queue_size=clients, own_thread=False)
    )


@dataclass
class ClientRun:
    """Aggregate tokens/s of ``clients`` clients at once (the median of the repeats) and their first-token times."""

    rate: float
    firsts: list[float]

    def ttft(self) -> str:
        return f"; first token p50 {percentile(self.firsts, 50):.3f} s, p95 {percentile(self.firsts, 95):.3f} s"


WARM_UP_TOKENS = 4  # a warm-up request's tokens: enough for the batch to step


def clients_at_once(
    pool: ProcessPoolExecutor,
    url: str,
    clients: int,
    tokens: int,
    prompt: str,
    repeats: int = 3,
    between: Callable[[], float] | None = None,
) -> tuple[ClientRun, list[float]]:
    """``repeats`` rounds of ``clients`` streamed completions at once (seeds differ by round), after one
    untimed round; ``between()`` (the in-process peer) runs before each round. (the run, the peer's figures)."""
    # untimed: a warm-up round of a few tokens each, so the batch steps at this many rows once (a batch decoder
    # packs its weights for a band of rows the first time it runs one: a one-time cost of the server's life)
    list(pool.map(client, [url] * clients, [WARM_UP_TOKENS] * clients, range(clients), [prompt] * clients))
    rates: list[float] = []
    firsts: list[float] = []
    peer: list[float] = []
    for repeat in range(repeats):
        if between is not None:
            peer.append(between())
        seeds = range(repeat * clients, (repeat + 1) * clients)
        started = time.perf_counter()
        done = list(pool.map(client, [url] * clients, [tokens] * clients, seeds, [prompt] * clients))
        rates.append(sum(count for count, _ in done) / (time.perf_counter() - started))
        firsts.extend(first for _, first in done)
    return ClientRun(sorted(rates)[len(rates) // 2], sorted(firsts)), sorted(peer)


def client_pool(clients: int) -> ProcessPoolExecutor:
    """``clients`` client processes, started (each has answered once) before anything is timed."""
    pool = ProcessPoolExecutor(max_workers=clients, mp_context=multiprocessing.get_context("spawn"))
    list(pool.map(ready, range(clients)))  # from the light client module: no PyTorch in the client processes
    return pool


def served_params(config: ExperimentConfig, tokens: int) -> SamplingParams:
    """What the server samples a bench client's request with (``serving/app.py:request_params``): the clients
    ask for temperature 1 and a seed and set nothing else, so the rest is the served config's."""
    return request_params(config.sample, GenerationFields(temperature=1.0, seed=1), tokens)


def one_stream(model: InferenceModel, prompt: list[int], params: SamplingParams) -> float:
    """The peer: tokens/s of one stream decoded in this process as ``sample`` does it, with the settings the server
    applies to the clients' requests (a pretrained model may end before ``max_new_tokens``, so the tokens of the
    text are what is counted)."""
    started = time.perf_counter()
    text = stream_decode(model, prompt, params, lambda _: None)
    return len(model.tokenizer.encode(text)) / (time.perf_counter() - started)


def serving(sizes: BenchSizes) -> list[BenchResult]:
    model = bench_model(sizes)
    n_layer, _, n_embd = sizes.sample_shape
    tokens = min(200, sizes.sample_new_tokens)
    prompt = model.tokenizer.encode("ROMEO:")

    in_process = partial(one_stream, model, prompt, served_params(bench_config(), tokens))

    results = []
    with serving_process(partial(bench_served, sizes, max(sizes.serve_clients))) as url:
        stream(url, tokens, 0)  # warm-up
        in_process()
        for clients in sizes.serve_clients:
            with client_pool(clients) as pool:
                run, peer_rates = clients_at_once(pool, url, clients, tokens, "ROMEO:", between=in_process)
            results.append(
                BenchResult(
                    name=f"serve, {clients} client{'s' if clients > 1 else ''} (aggregate)",
                    figure=run.rate,
                    unit="tokens/s",
                    peer="sample in process, one stream, same model",
                    peer_figure=peer_rates[len(peer_rates) // 2],
                    target={1: 0.7, 8: 4.0}.get(clients),
                    note=f"{n_layer}x{n_embd}, {tokens} tokens a client; continuous batching"
                    + (run.ttft() if clients > 1 else ""),
                )
            )
    return results


PRETRAINED_EXPERIMENT = "bundestag_smollm2_lora"  # its base is the make models GGUF; served without adapters
PRETRAINED_PROMPT = "Sehr geehrte Frau Präsidentin! Meine Damen und Herren! Wir beraten heute"


def pretrained_config(base_model: str | None, clients: int) -> ExperimentConfig:
    """The experiment's settings, its base (or ``base_model``) served as it is, without adapters: a merged
    fine-tune has the same shape."""
    overrides = [f"train.model.base_model='{base_model}'"] if base_model else []
    overrides += ["sample.require_adapters=false", f"serve.max_concurrent={clients}", f"serve.queue_size={clients}"]
    return load_config(experiment_config_path(PRETRAINED_EXPERIMENT), overrides)


def pretrained_served(
    base_model: str | None, clients: int, no_adapters: str
) -> Served:  # pragma: no cover (server process)
    return build_served(pretrained_config(base_model, clients), "bench", no_adapters, engine_thread=False)


@contextmanager
def transformers_serve(folder: str, log: Path, cache_tokens: int, start_timeout_s: float = 600.0) -> Iterator[str]:
    """``transformers serve`` on ``folder``, with its continuous batching (paged cache), on a loopback port.

    Its paged cache holds ``cache_tokens`` tokens (blocks of 32): left to itself on a CPU it sizes the cache
    from free memory (13.8 GB resident for SmolLM2-135M on a 24 GiB box), which the bench cannot afford beside
    our server."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).with_name("transformers")), "serve", folder]
    command += ["--continuous-batching", "--device", "cpu", "--dtype", "float32", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning", "--cb-block-size", "32"]
    command += ["--cb-num-blocks", str(-(-cache_tokens // 32))]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"transformers serve ended (exit {process.returncode}); see {log}")
                try:
                    if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"transformers serve did not listen within {start_timeout_s:g} s; see {log}")
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def pretrained_serving(
    base_model: str | None,
    work: Path,
    clients: tuple[int, ...] = (1, 2, 8, 32),
    tokens: int = 128,
    peer_clients: int = 8,
) -> list[BenchResult]:
    """A pretrained model (SmolLM2-135M-Instruct) behind ``serve``: each count of ``clients`` at once against one
    stream in process (what batching gains), and ``peer_clients`` against ``transformers serve
    --continuous-batching`` on the same weights (the Hugging Face folder read from the GGUF file), the same
    clients and prompt."""
    rows = max(*clients, peer_clients)
    work.mkdir(parents=True, exist_ok=True)
    config = pretrained_config(base_model, rows)
    model = load_model(config, str(work / "no-adapters"))
    settings = family_settings(config, HfLoraModelConfig)
    folder = hf_folder_for(settings.base_model, config.prepare.cache_dir, "train.model.base_model")
    prompt = model.tokenizer.encode(PRETRAINED_PROMPT)
    shape = f"{sum(p.numel() for p in model.module.parameters()) / 1e6:.0f}M parameters, float32"
    note = f"{Path(settings.base_model).name} ({shape}), {tokens} tokens a client, temperature 1"

    in_process = partial(one_stream, model, prompt, served_params(config, tokens))

    results: list[BenchResult] = []
    ours: dict[int, ClientRun] = {}
    with serving_process(partial(pretrained_served, base_model, rows, str(work / "no-adapters"))) as url:
        stream(url, 8, 0, prompt=PRETRAINED_PROMPT)  # warm-up
        for count in sorted({*clients, peer_clients}):
            with client_pool(count) as pool:
                ours[count], peer_rates = clients_at_once(
                    pool, url, count, tokens, PRETRAINED_PROMPT, between=in_process
                )
            if count in clients:
                results.append(
                    BenchResult(
                        name=f"serve a pretrained model, {count} client{'s' if count > 1 else ''} (aggregate)",
                        figure=ours[count].rate,
                        unit="tokens/s",
                        peer="sample in process, one stream, same model",
                        peer_figure=peer_rates[len(peer_rates) // 2],
                        target={1: 0.7, 8: 4.0}.get(count),
                        note=note + "; continuous batching" + (ours[count].ttft() if count > 1 else ""),
                    )
                )
    room = 2 * peer_clients * (len(prompt) + tokens + 32)  # every client's tokens twice over
    with client_pool(peer_clients) as pool, transformers_serve(folder, work / "transformers-serve.log", room) as url:
        stream(url, 8, 0, prompt=PRETRAINED_PROMPT)  # warm-up
        theirs, _ = clients_at_once(pool, url, peer_clients, tokens, PRETRAINED_PROMPT)
    results.append(
        BenchResult(
            name=f"serve vs transformers serve, {peer_clients} clients",
            figure=ours[peer_clients].rate,
            unit="tokens/s",
            peer="transformers serve --continuous-batching, same weights and clients",
            peer_figure=theirs.rate,
            target=1.0,
            note=note + "; transformers serve" + theirs.ttft(),
        )
    )
    return results


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile of sorted values (nearest rank)."""
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]
