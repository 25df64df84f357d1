"""Export paths beyond the char-level default: BPE and tiktoken vocabularies in llama.cpp, EMA weights, refusals."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from llama_cpp import Llama
from rich.console import Console

from ml_playground.commands.export import ExportRequest, default_out_dir, run_export
from ml_playground.commands.train import train
from ml_playground.core.errors import CheckpointError
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.families.gpt.gguf import _tensor
from ml_playground.sampling.runner import load_generator
from tests.conftest import ConfigFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak."


def trained(config_factory: ConfigFactory, *extra: str):  # type: ignore[no-untyped-def]
    config = config_factory("train.max_iters=10", *extra)
    prepare(config.prepare)
    train(config, quiet=True, console=Console(file=io.StringIO()))
    return config


@pytest.mark.parametrize(
    "tokenizer",
    [
        ["prepare.tokenizer='bpe'", "prepare.bpe_vocab_size=320"],
        ["prepare.tokenizer='gpt2'", "train.model.n_embd=32"],
    ],
)
def test_byte_level_vocabularies_tokenize_identically_in_llama_cpp(
    tiny_config: ConfigFactory, tmp_path: Path, tokenizer: list[str], rank_files: Path
) -> None:
    config = trained(tiny_config, *tokenizer, f"prepare.tiktoken_file='{rank_files / 'r50k_base.tiktoken'}'")
    run_export(
        config, ExportRequest(format="gguf", out_dir=tmp_path / "g", checkpoint="last", name="m", gguf_type="q8_0")
    )
    llm = Llama(model_path=str(tmp_path / "g" / "m-q8_0.gguf"), n_ctx=32, logits_all=True, verbose=False)
    ours = load_generator(config)
    ids = ours.tokenizer.encode(TEXT)
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == ids
    assert llm.detokenize(ids).decode() == TEXT


def test_ema_weights_are_what_gets_exported_when_sampling_uses_them(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    config = trained(tiny_config, "train.model.ema.enabled=true", "train.model.ema.decay=0.5", "sample.weights='ema'")
    run_export(config, ExportRequest(format="hf", out_dir=tmp_path / "hf", checkpoint="last"))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    ours = load_generator(config)  # sample.weights = "ema"
    x = torch.tensor([ours.tokenizer.encode(TEXT[:20])])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, ours.model(x), rtol=1e-5, atol=1e-5)
    no_ema = trained(tiny_config, "sample.weights='ema'", f"train.out_dir='{tmp_path / 'plain'}'")
    with pytest.raises(CheckpointError, match="no EMA weights"):
        run_export(no_ema, ExportRequest(format="hf", out_dir=tmp_path / "x", checkpoint="last"))
    assert default_out_dir(config, "gguf") == config.train.out_dir.parent / "export-gguf"


def test_ollama_create_is_run_when_the_binary_exists(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    config = trained(tiny_config, "sample.top_p=0.9")
    commands: list[list[str]] = []

    def run(command: list[str]) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, "success", "")

    result = run_export(
        config,
        ExportRequest(format="ollama", out_dir=tmp_path / "o", checkpoint="last", name="tiny"),
        run=run,
        which=lambda name: f"/usr/local/bin/{name}",
    )
    assert commands == [["ollama", "create", "tiny", "-f", str(tmp_path / "o" / "Modelfile")]]
    assert "ollama create exited with 0: success" in result.notes
    assert "PARAMETER top_p 0.9" in (tmp_path / "o" / "Modelfile").read_text("utf-8")


def test_q8_0_keeps_rows_that_do_not_fill_whole_blocks_in_f16() -> None:
    data, kind = _tensor("blk.0.ffn_up.weight", torch.ones(4, 48), "q8_0")
    assert kind is None
    assert data.dtype == np.float16
    quantized, qkind = _tensor("blk.0.ffn_up.weight", torch.ones(4, 64), "q8_0")
    assert qkind is not None
    assert quantized.dtype == np.uint8
