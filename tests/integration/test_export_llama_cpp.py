"""GGUF exports run in llama.cpp (llama-cpp-python, the `export` dependency group, built from source by make setup)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from llama_cpp import Llama
from rich.console import Console

from ml_playground.commands.export import ExportRequest, run_export
from ml_playground.commands.train import train
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.families.gpt.generation import generate
from ml_playground.sampling.runner import Generator, load_generator
from tests.conftest import TINY_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def german_char_model(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> ExperimentConfig:
    """A tiny char model on a real protocol: umlauts, ß and typographic quotes exercise the byte merges."""
    root = tmp_path_factory.mktemp("llama")
    config = load_config(
        experiment_config_path("bundestag_char"),
        [
            f"prepare.input_path='{shared_data / 'bundestag' / '19009.txt'}'",
            f"prepare.dataset_dir='{root / 'dataset'}'",
            f"train.out_dir='{root / 'run'}'",
            "prepare.min_char_count=1",
            *TINY_MODEL,
            "train.max_iters=60",
            "train.eval_interval=30",
        ],
    )
    prepare(config.prepare)
    train(config, quiet=True, console=Console(file=io.StringIO()))
    return config


def load_llama(config: ExperimentConfig, out: Path, kind: str) -> tuple[Llama, Generator]:
    run_export(config, ExportRequest(format="gguf", out_dir=out, checkpoint="best", name="m", gguf_type=kind))  # type: ignore[arg-type]
    block = config.train.model.block_size
    return Llama(model_path=str(out / f"m-{kind}.gguf"), n_ctx=block, logits_all=True, verbose=False), load_generator(
        config
    )


def llama_logits(llm: Llama, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def test_f32_gguf_tokenizes_scores_and_generates_like_us(german_char_model: ExperimentConfig, tmp_path: Path) -> None:
    llm, ours = load_llama(german_char_model, tmp_path / "f32", "f32")
    text = "Präsident Dr. Wolfgang Schäuble:\n„Größe“ – Straße"
    ids = ours.tokenizer.encode(text)
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    assert llm.detokenize(ids).decode() == text
    prompt = ids[:12]
    with torch.no_grad():
        mine = ours.model(torch.tensor([prompt]))[0].numpy()
    np.testing.assert_allclose(llama_logits(llm, prompt), mine, atol=2e-3, rtol=0)
    llm.reset()
    theirs = []
    for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        theirs.append(token)
        if len(theirs) == 16:
            break
    greedy = generate(ours.model, torch.tensor([prompt]), SamplingParams(max_new_tokens=16, temperature=0.0))
    assert theirs == greedy[0, len(prompt) :].tolist()


def test_q8_0_gguf_agrees_on_the_top_token(german_char_model: ExperimentConfig, tmp_path: Path) -> None:
    llm, ours = load_llama(german_char_model, tmp_path / "q8", "q8_0")
    corpus = (german_char_model.prepare.dataset_dir / "corpus.txt").read_text("utf-8")[:5000]
    ids = ours.tokenizer.encode(corpus)
    block = german_char_model.train.model.block_size
    agree = total = 0
    for start in range(0, 10 * block, block):
        window = ids[start : start + block]
        with torch.no_grad():
            mine = ours.model(torch.tensor([window]))[0].numpy().argmax(-1)
        theirs = llama_logits(llm, window).argmax(-1)
        agree += int((mine == theirs).sum())
        total += len(window)
    assert total == 320
    assert agree / total >= 0.95, f"top-1 agreement {agree / total:.3f} over {total} positions"
