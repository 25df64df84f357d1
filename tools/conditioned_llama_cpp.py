"""Does the exported conditioned model speak for the requested party in llama.cpp as it does in our sampler?

For a trained header-conditioned LoRA experiment (``speakger_smollm2`` by default): export the ``best``
checkpoint as an f32 GGUF file, then run ``analyze``'s measurement with llama.cpp as the sampler: the same
parties, the same header prompts (the same token ids, from our tokenizer), the same sampling settings and
seeds (``sample.temperature``, ``top_k``, ``top_p``, ``max_new_tokens``; no repetition penalty, no
min-p), guidance off, and the same classifier (TF-IDF + logistic regression on real speeches the models did
not train on). The report goes to ``train.out_dir/analysis-llama-cpp``; the figure to compare is the
``conditioning_accuracy`` of ``ml_playground analyze EXPERIMENT --per-party N --json`` on the same checkpoint.

Usage: ``uv run python tools/conditioned_llama_cpp.py [EXPERIMENT] [--per-party 10] [--threads 2]``; prints
the per-party shares and the JSON of the report last. Needs a trained run (``ml_playground loop EXPERIMENT``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml_playground.commands.export import run_export
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import ExperimentConfig
from ml_playground.evaluation.analysis import (
    GeneratedSample,
    Sampler,
    analyze,
    party_header,
    sample_from_text,
)
from ml_playground.export.request import ExportRequest
from ml_playground.sampling.runner import Generator


def llama_cpp_sampler(gguf: Path, threads: int) -> Sampler:
    """``analyze``'s sampler, decoding with llama.cpp on ``gguf`` from our tokenizer's prompt ids."""

    def sample(
        config: ExperimentConfig, parties: list[str], per_party: int, emit: Callable[[str], None], generator: Generator
    ) -> list[GeneratedSample]:
        from llama_cpp import Llama

        # the repeat penalty looks back over the whole answer, as ours does (llama.cpp's default is 64 tokens)
        llm = Llama(
            model_path=str(gguf),
            n_ctx=2048,
            n_threads=threads,
            n_threads_batch=threads,
            last_n_tokens_size=2048,
            verbose=False,
        )
        samples = []
        for party in parties:
            header = party_header(config, party)
            prompt = generator.tokenizer.encode(header)
            for index in range(per_party):
                params = generator.params(config.sample, index)
                answer: Any = llm.create_completion(
                    prompt=prompt,
                    max_tokens=params.max_new_tokens,
                    temperature=params.temperature,
                    top_k=params.top_k or 0,
                    top_p=1.0 if params.top_p is None else params.top_p,
                    min_p=0.0,
                    repeat_penalty=params.repetition_penalty,
                    seed=params.seed,
                )
                choice = answer["choices"][0]
                samples.append(sample_from_text(party, header, choice["text"], choice["finish_reason"] == "stop"))
            emit(f"llama.cpp: generated {per_party} sample(s) for {party}\n")
        return samples

    return sample


def main() -> int:
    parser = argparse.ArgumentParser(description="analyze's conditioning accuracy, sampled by llama.cpp.")
    parser.add_argument("experiment", nargs="?", default="speakger_smollm2")
    parser.add_argument("--per-party", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    config = load_config(experiment_config_path(args.experiment), ["sample.guidance=0.0"])
    with tempfile.TemporaryDirectory() as tmp:
        gguf_dir = run_export(config, ExportRequest("gguf", Path(tmp) / "gguf", "best", gguf_type="f32")).out_dir
        gguf = next(gguf_dir.glob("*.gguf"))
        report = analyze(
            config,
            args.per_party,
            emit=lambda text: print(text, end="", flush=True),
            sampler=llama_cpp_sampler(gguf, args.threads),
            out_name="analysis-llama-cpp",
        )
    shares = ", ".join(f"{party} {share:.0%}" for party, share in report.per_party.items())
    print(f"llama.cpp on the f32 GGUF: conditioning accuracy {report.conditioning_accuracy:.3f} ({shares})")
    print(json.dumps(report.to_dict(), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
