"""Does a chat fine-tune stop, in our server and in llama.cpp? And do both runtimes agree on its tokens?

For a trained chat experiment (``bundestag_qa_smollm2`` by default), on its validation questions:

1. ``stop_rate`` through ``serve``'s ``/v1/chat/completions`` (a real server on loopback, the ``openai``
   client, greedy, ``max_tokens`` = ``sample.max_new_tokens``, eight questions at a time as eight users would
   ask them), for the fine-tune and for the base model;
   all of it with the experiment's ``sample.repetition_penalty`` (or ``--repetition-penalty``): ours over
   the answer's tokens, llama.cpp's ``repeat_penalty`` over all it drew (``last_n_tokens_size`` = the context);
2. the same through llama.cpp (``Llama.create_chat_completion`` with the chat template the exported GGUF
   embeds) on the fine-tune exported as f32 GGUF, and on the base model's own GGUF file;
3. the first 32 greedy tokens of the merged model in transformers against llama.cpp's on the f32 GGUF,
   from the same rendered prompt, on the first 10 questions.

Usage: ``uv run python tools/chat_stops.py [EXPERIMENT] [--questions 50] [--threads 2] [--no-base]
[--repetition-penalty P]``; prints one line
per figure and the JSON of all of them last. Needs a trained run (``ml_playground loop EXPERIMENT``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml_playground.commands.export import run_export  # noqa: E402
from ml_playground.configuration import experiment_config_path, load_config  # noqa: E402
from ml_playground.configuration.models import ExperimentConfig  # noqa: E402
from ml_playground.evaluation.chat import last_answer, read_val_conversations  # noqa: E402
from ml_playground.export.request import ExportRequest  # noqa: E402

AGREE_QUESTIONS = 10
CLIENTS = 8  # questions asked of the server at once
AGREE_TOKENS = 32
SHOWN = 3  # questions whose answers (base and fine-tune) are printed
CONTEXT = 2048  # llama.cpp's context, and the window its repeat penalty looks back over


def serve_stop_rate(
    config: ExperimentConfig, questions: list[list[dict[str, str]]], checkpoint: str, penalty: float
) -> tuple[float, list[str]]:
    """A real server on loopback, asked by the ``openai`` client: the share of answers that finish with 'stop',
    and the answers."""
    from openai import OpenAI

    from ml_playground.serving.server import build_served, serving_process

    with serving_process(partial(build_served, config, "chat", checkpoint, engine_thread=False)) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="none", timeout=600)

        def ask(messages: list[dict[str, str]]) -> tuple[bool, str]:
            answer = client.chat.completions.create(
                model="chat",
                messages=messages,  # type: ignore[arg-type]
                temperature=0.0,
                max_tokens=config.sample.max_new_tokens,
                extra_body={"repetition_penalty": penalty},
            )
            return answer.choices[0].finish_reason == "stop", answer.choices[0].message.content or ""

        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:  # as many users at once: the server batches them
            answered = list(pool.map(ask, questions))
        return sum(stopped for stopped, _ in answered) / len(questions), [text for _, text in answered]


def llama(gguf: Path, threads: int) -> Any:
    from llama_cpp import Llama

    return Llama(
        model_path=str(gguf),
        n_ctx=CONTEXT,
        n_threads=threads,
        n_threads_batch=threads,
        last_n_tokens_size=CONTEXT,
        verbose=False,
    )


def llama_cpp_stop_rate(
    gguf: Path, questions: list[list[dict[str, str]]], max_tokens: int, threads: int, penalty: float
) -> float:
    llm = llama(gguf, threads)
    stopped = 0
    for messages in questions:
        answer: Any = llm.create_chat_completion(
            messages=messages,
            temperature=0.0,
            max_tokens=max_tokens,
            repeat_penalty=penalty,
        )
        stopped += answer["choices"][0]["finish_reason"] == "stop"
    return stopped / len(questions)


def agreement(
    merged: Path, gguf: Path, questions: list[list[dict[str, str]]], threads: int, penalty: float
) -> list[bool]:
    """For each question: do transformers (merged HF folder) and llama.cpp (f32 GGUF) give the same 32 greedy tokens,
    each with the repetition penalty over the tokens it drew?"""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

    from ml_playground.core.sampling_rules import penalize_repeats

    def answer_penalty(start: int) -> Any:
        def apply(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            drawn = ids[:, start:]
            seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, drawn, True)
            return penalize_repeats(scores, seen, penalty) if drawn.size(1) else scores

        return LogitsProcessorList([apply])

    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    model.eval()  # type: ignore[no-untyped-call]
    llm = llama(gguf, threads)
    same = []
    for messages in questions:
        encoded: Any = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = [int(i) for i in (encoded["input_ids"] if hasattr(encoded, "keys") else encoded)]
        with torch.no_grad():
            out: Any = model.generate(  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue]
                torch.tensor([ids]),
                max_new_tokens=AGREE_TOKENS,
                do_sample=False,
                logits_processor=answer_penalty(len(ids)),
            )
        ours = out[0, len(ids) :].tolist()
        llm.reset()
        theirs: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=penalty):
            theirs.append(int(token))
            if len(theirs) == len(ours) or token == llm.token_eos():
                break
        same.append(ours == theirs)
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description="Stop rates of a chat fine-tune in serve and llama.cpp.")
    parser.add_argument("experiment", nargs="?", default="bundestag_qa_smollm2")
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-base", action="store_true", help="skip the base model's rows (its answers run long)")
    parser.add_argument("--repetition-penalty", type=float, help="default: the experiment's sample.repetition_penalty")
    args = parser.parse_args()
    config = load_config(experiment_config_path(args.experiment))
    penalty = config.sample.repetition_penalty if args.repetition_penalty is None else args.repetition_penalty
    torch.set_num_threads(args.threads)
    conversations = read_val_conversations(config.prepare.dataset_dir)[: args.questions]
    questions = [messages[: last_answer(messages)] for messages in conversations]
    max_tokens = config.sample.max_new_tokens
    figures: dict[str, Any] = {
        "experiment": args.experiment,
        "questions": len(questions),
        "max_tokens": max_tokens,
        "repetition_penalty": penalty,
    }
    with tempfile.TemporaryDirectory() as tmp:
        gguf_dir = run_export(config, ExportRequest("gguf", Path(tmp) / "gguf", "best", gguf_type="f32")).out_dir
        gguf = next(gguf_dir.glob("*.gguf"))
        hf_dir = run_export(config, ExportRequest("hf", Path(tmp) / "hf", "best")).out_dir
        figures["serve_stop_rate"], tuned = serve_stop_rate(config, questions, "best", penalty)
        print(f"serve, fine-tune: stop rate {figures['serve_stop_rate']:.2f}", flush=True)
        untuned = [""] * len(questions)
        if not args.no_base:
            base = config.model_copy(update={"sample": config.sample.model_copy(update={"require_adapters": False})})
            figures["serve_stop_rate_base"], untuned = serve_stop_rate(
                base, questions, str(Path(tmp) / "no-adapters"), penalty
            )
            print(f"serve, base model: stop rate {figures['serve_stop_rate_base']:.2f}", flush=True)
        for messages, ours, theirs in list(zip(questions, tuned, untuned, strict=True))[:SHOWN]:
            print(f"\nQ: {messages[-1]['content']}\nbase: {theirs or '(skipped)'}\nfine-tune: {ours}", flush=True)
        figures["llama_cpp_stop_rate"] = llama_cpp_stop_rate(gguf, questions, max_tokens, args.threads, penalty)
        print(f"llama.cpp, fine-tune (f32 GGUF): stop rate {figures['llama_cpp_stop_rate']:.2f}", flush=True)
        base_gguf = Path(str(config.train.model.base_model))  # type: ignore[attr-defined]
        if base_gguf.suffix == ".gguf" and not args.no_base:
            figures["llama_cpp_stop_rate_base"] = llama_cpp_stop_rate(
                base_gguf, questions, max_tokens, args.threads, penalty
            )
            print(f"llama.cpp, base model ({base_gguf.name}): stop rate {figures['llama_cpp_stop_rate_base']:.2f}")
        same = agreement(hf_dir, gguf, questions[:AGREE_QUESTIONS], args.threads, penalty)
        figures["first_32_tokens_equal"] = f"{sum(same)}/{len(same)}"
        print(f"first {AGREE_TOKENS} greedy tokens, transformers vs llama.cpp: {sum(same)}/{len(same)} equal")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
