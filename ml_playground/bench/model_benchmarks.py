"""In-process benchmarks: training throughput and sampling against Hugging Face, compile, scaling.

The peer is ``transformers``' ``GPT2LMHeadModel`` configured to the same shape, trained with the
same optimizer on the same batches, measured alternately with ours in this process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from ml_playground.bench.harness import BenchResult, median_seconds, paired_medians
from ml_playground.core.linear_kernels import LinearKernel, linear, onednn_available
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.core.tokenizer import CharTokenizer
from ml_playground.families.gpt.family import decode_blocks
from ml_playground.families.gpt.generation import generate
from ml_playground.families.gpt.gguf import write_gguf
from ml_playground.families.gpt.kernel_choice import Workload, pick_linear_kernel
from ml_playground.families.gpt.model import GPT, GPTConfig


@dataclass(frozen=True)
class BenchSizes:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    vocab_size: int = 65
    batch_size: int = 16
    steps_per_repeat: int = 10
    repeats: int = 5
    sample_shape: tuple[int, int, int] = (6, 6, 384)  # nanoGPT's shakespeare-char model
    sample_block_size: int = 256
    sample_new_tokens: int = 500
    hf_sample_new_tokens: int = 250  # GPT-2 cannot go past n_positions, so stay inside one block
    llama_new_tokens: int = 200  # inside one block of 256: llama.cpp would stop at its context
    scaling_grid: tuple[tuple[int, int], ...] = ((128, 4), (256, 4), (384, 4), (128, 8), (256, 8), (384, 8))
    matmul_size: int = 2048
    serve_clients: tuple[int, ...] = (1, 2, 8, 32)


TINY = BenchSizes(
    n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=20, batch_size=2, steps_per_repeat=2, repeats=1,
    sample_shape=(1, 2, 16), sample_block_size=16, sample_new_tokens=24, hf_sample_new_tokens=8, llama_new_tokens=8,
    scaling_grid=((16, 1),), matmul_size=64, serve_clients=(1, 8),
)  # fmt: skip


def ours_model(
    sizes: BenchSizes,
    n_layer: int,
    n_head: int,
    n_embd: int,
    block_size: int,
    kernel: LinearKernel | None = None,
    decoding: bool = False,
) -> GPT:
    """Our GPT as training (or, ``decoding``, sampling) builds it: linear kernel ``auto`` unless ``kernel`` is given."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(sizes.vocab_size, block_size, n_layer, n_head, n_embd))
    workload = Workload(n_embd, 1 if decoding else sizes.batch_size * block_size, training=not decoding)
    model.use_linear_kernel(kernel or pick_linear_kernel("auto", torch.device("cpu"), workload))
    return model.use_decode_blocks(decode_blocks(model, "auto" if kernel is None else kernel)) if decoding else model


def hf_model(sizes: BenchSizes, n_layer: int, n_head: int, n_embd: int, block_size: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=sizes.vocab_size, n_positions=block_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def training_steps(
    model: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    sizes: BenchSizes,
    block_size: int,
    autocast: torch.dtype | None = None,
) -> Callable[[], None]:
    """``steps_per_repeat`` AdamW steps on fixed random batches. The fused AdamW: what our trainer builds on
    the CPU and what Hugging Face's ``Trainer`` uses by default with PyTorch >= 2.8 (``adamw_torch_fused``).
    ``autocast``: the forward pass under CPU autocast to that dtype (weights, optimizer and loss float32)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    generator = torch.Generator().manual_seed(1)
    data = torch.randint(
        sizes.vocab_size, (sizes.steps_per_repeat, sizes.batch_size, block_size + 1), generator=generator
    )

    def run() -> None:
        for batch in data:
            with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                logits = forward(batch[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def matmul_peaks(size: int) -> dict[str, float]:
    """FLOP/s of a float32 ``size``-square product through ``torch.mm`` (MKL on x86) and, where present, oneDNN."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    peaks = {"torch.mm": 2 * size**3 / median_seconds(lambda: torch.mm(a, b), warmup=2, repeats=5)}
    if onednn_available():
        with torch.no_grad():
            peaks["oneDNN"] = 2 * size**3 / median_seconds(lambda: linear(a, b, None, "onednn"), warmup=2, repeats=5)
    return peaks


def matmul_peak_flops(size: int) -> float:
    """The faster of ``torch.mm`` and oneDNN's linear on two square float32 matrices, in FLOP/s."""
    return max(matmul_peaks(size).values())


def train_throughput_vs_hf(sizes: BenchSizes, autocast: torch.dtype | None = None) -> list[BenchResult]:
    """Training tokens/s of our GPT against HF's ``GPT2LMHeadModel`` of the same shape, both in float32 or both
    under CPU ``autocast`` (what ``train.dtype = "auto"`` trains in where this CPU was measured faster in
    bfloat16, and what HF's ``Trainer`` runs with ``bf16=True``); with the float32 FLOP/s against the peak."""
    shape = (sizes.n_layer, sizes.n_head, sizes.n_embd, sizes.block_size)
    ours = ours_model(sizes, *shape)
    peer = hf_model(sizes, *shape)
    ours_run = training_steps(ours, ours, sizes, sizes.block_size, autocast)
    peer_run = training_steps(peer, lambda x: peer(input_ids=x).logits, sizes, sizes.block_size, autocast)
    ours_s, peer_s = paired_medians(ours_run, peer_run, warmup=1, repeats=sizes.repeats)
    tokens = sizes.steps_per_repeat * sizes.batch_size * sizes.block_size
    ours_tps, peer_tps = tokens / ours_s, tokens / peer_s
    shape_text = f"{sizes.n_layer}L {sizes.n_head}H {sizes.n_embd}C block {sizes.block_size} batch {sizes.batch_size}"
    if autocast is not None:
        precision = str(autocast).removeprefix("torch.")
        return [
            BenchResult(
                f"train tokens/s vs HF GPT2LMHeadModel, {precision} autocast", ours_tps, "tokens/s",
                f"GPT2LMHeadModel {shape_text}, the same autocast", peer_tps, 1.5,
                note=f"both forward passes under CPU {precision} autocast: what train.dtype = auto picked here",
            )
        ]  # fmt: skip
    flops_per_token = 6 * ours.num_parameters() + 12 * sizes.n_layer * sizes.n_embd * sizes.block_size
    peak = matmul_peak_flops(sizes.matmul_size)
    achieved = flops_per_token * ours_tps
    return [
        BenchResult(
            "train tokens/s vs HF GPT2LMHeadModel", ours_tps, "tokens/s",
            f"GPT2LMHeadModel {shape_text}", peer_tps, 1.5,
        ),
        BenchResult(
            "train FLOP/s vs fp32 matmul peak", achieved / 1e9, "GFLOP/s",
            f"best of torch.mm and oneDNN, {sizes.matmul_size}^2", peak / 1e9,
            note="6*params*tokens/s + attention; ratio = fraction of the measured peak",
        ),
    ]  # fmt: skip


def linear_kernels(sizes: BenchSizes) -> BenchResult:
    """Training tokens/s of our model with oneDNN linear layers against PyTorch's default ones (MKL on x86)."""
    shape = (sizes.n_layer, sizes.n_head, sizes.n_embd, sizes.block_size)
    workload = Workload(sizes.n_embd, sizes.batch_size * sizes.block_size, training=True)
    picked = pick_linear_kernel("auto", torch.device("cpu"), workload)
    if not onednn_available():  # pragma: no cover (PyTorch builds without oneDNN: not this project's machines)
        return BenchResult("train tokens/s, linear kernel onednn vs aten", 0.0, "tokens/s", note="no oneDNN here")
    onednn, aten = ours_model(sizes, *shape, kernel="onednn"), ours_model(sizes, *shape, kernel="aten")
    onednn_s, aten_s = paired_medians(
        training_steps(onednn, onednn, sizes, sizes.block_size),
        training_steps(aten, aten, sizes, sizes.block_size),
        warmup=1,
        repeats=sizes.repeats,
    )
    tokens = sizes.steps_per_repeat * sizes.batch_size * sizes.block_size
    return BenchResult(
        "train tokens/s, linear kernel onednn vs aten", tokens / onednn_s, "tokens/s",
        "our model with F.linear (MKL on x86)", tokens / aten_s,
        note=f"linear_kernel = auto measured this machine at start-up and picked {picked} "
        "(families/gpt/kernel_choice.py)",
    )  # fmt: skip


def compile_vs_eager(sizes: BenchSizes) -> BenchResult:
    shape = (sizes.n_layer, sizes.n_head, sizes.n_embd, sizes.block_size)
    eager = ours_model(sizes, *shape)
    compiled_model = ours_model(sizes, *shape)
    compiled = torch.compile(compiled_model)
    compiled_run = training_steps(compiled_model, compiled, sizes, sizes.block_size)
    eager_run = training_steps(eager, eager, sizes, sizes.block_size)
    compiled_s, eager_s = paired_medians(compiled_run, eager_run, warmup=2, repeats=sizes.repeats)
    tokens = sizes.steps_per_repeat * sizes.batch_size * sizes.block_size
    return BenchResult(
        "train tokens/s, torch.compile vs eager", tokens / compiled_s, "tokens/s", "our eager model", tokens / eager_s
    )


def sampling(sizes: BenchSizes) -> list[BenchResult]:
    n_layer, n_head, n_embd = sizes.sample_shape
    block = sizes.sample_block_size
    ours = ours_model(sizes, n_layer, n_head, n_embd, block, decoding=True).eval()
    prompt = torch.zeros((1, 1), dtype=torch.long)
    cached = SamplingParams(max_new_tokens=sizes.sample_new_tokens, temperature=0.0)
    uncached = SamplingParams(max_new_tokens=sizes.sample_new_tokens, temperature=0.0, use_kv_cache=False)
    cached_s, uncached_s = paired_medians(
        lambda: generate(ours, prompt, cached), lambda: generate(ours, prompt, uncached), warmup=1, repeats=3
    )
    peer = hf_model(sizes, n_layer, n_head, n_embd, block)
    peer.eval()  # type: ignore[no-untyped-call]
    short = SamplingParams(max_new_tokens=sizes.hf_sample_new_tokens, temperature=0.0)

    def hf_generate() -> None:
        with torch.inference_mode():
            peer.generate(  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue]
                prompt, max_new_tokens=sizes.hf_sample_new_tokens, min_new_tokens=sizes.hf_sample_new_tokens,
                do_sample=False, use_cache=True, pad_token_id=0,
            )  # fmt: skip

    ours_short_s, hf_s = paired_medians(lambda: generate(ours, prompt, short), hf_generate, warmup=1, repeats=3)
    shape_text = f"{n_layer}L {n_head}H {n_embd}C block {block}"
    return [
        BenchResult(
            f"sampling {sizes.sample_new_tokens} tokens, KV cache vs none", sizes.sample_new_tokens / cached_s,
            "tokens/s", f"our uncached path, {shape_text}", sizes.sample_new_tokens / uncached_s, 5.0,
        ),
        BenchResult(
            f"sampling {sizes.hf_sample_new_tokens} tokens vs HF generate", sizes.hf_sample_new_tokens / ours_short_s,
            "tokens/s", f"GPT2LMHeadModel.generate, {shape_text}, greedy, KV cache", sizes.hf_sample_new_tokens / hf_s,
            1.5,
        ),
    ]  # fmt: skip


def scaling_table(sizes: BenchSizes) -> list[BenchResult]:
    results = []
    for n_embd, n_layer in sizes.scaling_grid:
        model = ours_model(sizes, n_layer, max(1, n_embd // 32), n_embd, sizes.block_size)
        run = training_steps(model, model, sizes, sizes.block_size)
        seconds = median_seconds(run, warmup=1, repeats=sizes.repeats) / sizes.steps_per_repeat
        params = model.num_parameters() / 1e6
        results.append(
            BenchResult(
                f"step time n_embd {n_embd} n_layer {n_layer}", seconds * 1000, "ms/step",
                note=f"{params:.2f}M params, {sizes.batch_size * sizes.block_size / seconds:,.0f} tokens/s",
                higher_is_better=False,
            )
        )  # fmt: skip
    return results


def sampling_vs_llama_cpp(sizes: BenchSizes, work_dir: Path) -> BenchResult:
    """Greedy generation, batch 1, same weights and threads: our ``generate`` against llama.cpp on a GGUF f32 export."""
    from llama_cpp import Llama

    n_layer, n_head, n_embd = sizes.sample_shape
    block, new_tokens = sizes.sample_block_size, sizes.llama_new_tokens
    ours = ours_model(sizes, n_layer, n_head, n_embd, block, decoding=True).eval()
    tokenizer = CharTokenizer([chr(32 + i) for i in range(sizes.vocab_size)])
    path = work_dir / "bench-f32.gguf"
    write_gguf(path, ours.config, ours.state_dict(), tokenizer, "f32", "bench")
    threads = torch.get_num_threads()
    peer = Llama(model_path=str(path), n_ctx=block, n_threads=threads, n_threads_batch=threads, verbose=False)
    prompt = torch.zeros((1, 1), dtype=torch.long)
    greedy = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    counted: list[int] = []

    def llama_cpp_generate() -> None:
        produced = 0
        for _ in peer.generate([0], top_k=1, temp=0.0, reset=True):
            produced += 1
            if produced == new_tokens:
                break
        counted[:] = [produced]

    ours_s, peer_s = paired_medians(lambda: generate(ours, prompt, greedy), llama_cpp_generate, warmup=1, repeats=3)
    peer.close()
    if counted != [new_tokens]:
        raise RuntimeError(f"llama.cpp stopped after {counted} of {new_tokens} tokens")
    return BenchResult(
        f"sampling {new_tokens} tokens vs llama.cpp", new_tokens / ours_s, "tokens/s",
        f"llama-cpp-python on our GGUF f32 export, {n_layer}L {n_head}H {n_embd}C block {block}, greedy, "
        f"batch 1, {threads} threads", new_tokens / peer_s, 1.0,
        note=f"{4 * ours.num_parameters() / 2**20:.0f} MiB of float32 weights read per token by both",
    )  # fmt: skip
