"""Our GGUF writer for Hugging Face llama and qwen2 models, checked by llama.cpp and by transformers.

Tiny real models built locally (``build_tiny_causal_lm``): a llama with SmolLM2's layout and a
qwen2 with its q/k/v biases, each with a byte-level BPE and a ChatML chat template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml_playground.core.errors import UserError
from ml_playground.core.gguf_import import hf_folder_for
from ml_playground.families.hf_lora.gguf import read_back, write_hf_gguf
from ml_playground.families.hf_lora.hub import load_pretrained_model, load_pretrained_tokenizer
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GERMAN = "Sehr geehrte Frau Präsidentin! Meine Damen und Herren, die Größe der Aufgabe ist klar."


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Any:
    text = (shared_data / "bundestag" / "19009.txt").read_text("utf-8-sig")[:200_000]
    folder = build_tiny_causal_lm(
        tmp_path_factory.mktemp(request.param) / "model", [text], architecture=request.param, hidden_size=64
    )
    model = load_pretrained_model(str(folder), revision=None, dtype=torch.float32).eval()
    tokenizer = load_pretrained_tokenizer(str(folder))
    return request.param, model, tokenizer, folder


def llama(path: Path, context: int = 128) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=context, logits_all=True, verbose=False)


def test_llama_cpp_tokenizes_scores_and_generates_like_transformers(tiny: Any, tmp_path: Path) -> None:
    arch, model, tokenizer, _ = tiny
    path = tmp_path / "m-f32.gguf"
    write_hf_gguf(path, model, tokenizer, "f32", "tiny")
    read = read_back(path)
    assert read["eos_id"] == tokenizer.eos_token_id
    assert read["chat_template"] == tokenizer.chat_template
    llm = llama(path)
    ids = tokenizer(GERMAN, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(GERMAN.encode(), add_bos=False, special=False) == ids
    assert llm.detokenize(ids).decode() == GERMAN
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hallo"}], add_generation_prompt=True)
    chat_ids = chat["input_ids"] if hasattr(chat, "keys") else chat
    rendered = tokenizer.decode(chat_ids)
    assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == list(chat_ids)  # specials are one token
    prompt = ids[:12]
    llm.reset()
    llm.eval(prompt)
    theirs = np.array(llm.scores[: len(prompt)])
    with torch.no_grad():
        mine = model(torch.tensor([prompt])).logits[0].numpy()
    np.testing.assert_allclose(theirs, mine, atol=1e-3, rtol=0)
    greedy = []
    for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        greedy.append(token)
        if len(greedy) == 32:
            break
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
    assert greedy == expected[0, len(prompt) :].tolist(), arch


def test_q8_0_agrees_on_the_top_token(tiny: Any, tmp_path: Path, shared_data: Path) -> None:
    _, model, tokenizer, _ = tiny
    path = tmp_path / "m-q8_0.gguf"
    write_hf_gguf(path, model, tokenizer, "q8_0", "tiny")
    llm = llama(path, context=512)
    text = (shared_data / "bundestag" / "19010.txt").read_text("utf-8-sig")[20_000:40_000]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:256]
    llm.reset()
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)]).argmax(-1)
    with torch.no_grad():
        mine = model(torch.tensor([ids])).logits[0].numpy().argmax(-1)
    assert len(ids) == 256
    assert (theirs == mine).mean() >= 0.95


def test_transformers_reads_the_file_back_to_the_same_model(tiny: Any, tmp_path: Path) -> None:
    _, model, tokenizer, _ = tiny
    path = tmp_path / "m-f32.gguf"
    write_hf_gguf(path, model, tokenizer, "f32", "tiny")
    again = load_pretrained_model(str(path), revision=None, dtype=torch.float32, cache_dir=tmp_path / "cache")
    ids = tokenizer(GERMAN, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(again(torch.tensor([ids])).logits, model(torch.tensor([ids])).logits)
    assert Path(hf_folder_for(str(path), tmp_path / "cache", "k"), "gguf_source.json").is_file()


def test_an_architecture_without_a_gguf_mapping_is_refused(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=300))
    with pytest.raises(UserError, match="GGUF export supports LlamaForCausalLM, Qwen2ForCausalLM; this model is"):
        write_hf_gguf(tmp_path / "x.gguf", model, None, "f32", "x")
    assert not (tmp_path / "x.gguf").exists()


def test_a_gguf_file_is_a_base_model_to_fine_tune_sample_and_export(
    tiny: Any, tmp_path: Path, shared_data: Path
) -> None:
    """The whole path a user with an Ollama model takes: GGUF in, LoRA, sample, GGUF out."""
    import io

    from rich.console import Console

    from ml_playground.commands.export import run_export
    from ml_playground.commands.train import train
    from ml_playground.configuration import experiment_config_path, load_config
    from ml_playground.data_pipeline.preparer import prepare
    from ml_playground.export.request import ExportRequest
    from ml_playground.sampling.runner import load_model, sample

    _, model, tokenizer, _ = tiny
    base = tmp_path / "base-f32.gguf"
    write_hf_gguf(base, model, tokenizer, "f32", "base")
    config = load_config(
        experiment_config_path("bundestag_smollm2_lora"),
        [
            f"train.model.base_model='{base}'",
            f"prepare.input_path='{shared_data / 'bundestag' / '19009.txt'}'",
            f"prepare.dataset_dir='{tmp_path / 'dataset'}'",
            f"prepare.cache_dir='{tmp_path / 'cache'}'",
            f"train.out_dir='{tmp_path / 'run'}'",
            "train.model.compile=false",
            "train.model.block_size=64",
            "train.max_iters=4",
            "train.eval_interval=2",
            "train.checkpoint.interval=2",
            "train.eval_max_tokens=256",
            "train.model.save_merged_on_best=false",
            "sample.max_new_tokens=8",
        ],
    )
    prepare(config.prepare)
    train(config, quiet=True, console=Console(file=io.StringIO()))
    assert load_model(config).checkpoint == f"{base} + adapters {tmp_path / 'run' / 'adapters' / 'best'}"
    assert sample(config, emit=lambda _: None)[0].text.startswith(config.sample.prompt)
    exported = run_export(config, ExportRequest(format="gguf", out_dir=tmp_path / "out", checkpoint="best"))
    assert exported.files == ["model-f16.gguf"]
