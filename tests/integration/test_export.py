"""Export checked by the real consumers: transformers loads the folder (no remote code) and computes our logits;
the gguf package reads the GGUF back; llama.cpp runs it when llama-cpp-python is installed (the export group)."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from ml_playground.commands.export import ExportRequest, run_export
from ml_playground.commands.train import train
from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.errors import CheckpointError, UserError
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.core.tokenizer import BpeTokenizer, TiktokenTokenizer, load_tokenizer
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.export.hf_tokenizer import to_pretrained_tokenizer
from ml_playground.export.request import ExportError
from ml_playground.families.gpt.generation import generate
from ml_playground.sampling.runner import load_generator
from tests.conftest import ConfigFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PROMPT = "ROMEO:\nWhat light"  # 17 tokens + 12 new ones fit in the tiny block of 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> ExperimentConfig:
    from ml_playground.configuration import experiment_config_path, load_config
    from tests.conftest import tiny_overrides

    root = tmp_path_factory.mktemp("export")
    corpus = root / "corpus.txt"
    corpus.write_text((shared_data / "shakespeare" / "input.txt").read_text("utf-8")[:30_000])
    config = load_config(
        experiment_config_path("shakespeare"),
        [*tiny_overrides(root, corpus), "train.max_iters=20", "train.model.bias=true"],
    )
    prepare(config.prepare)
    train(config, quiet=True, console=Console(file=io.StringIO()))
    return config


def request(config: ExperimentConfig, fmt: str, out: Path, **extra: object) -> ExportRequest:
    return ExportRequest(format=fmt, out_dir=out, checkpoint="best", name="tiny", **extra)  # type: ignore[arg-type]


def test_hf_export_loads_without_remote_code_and_matches_our_logits_and_greedy_tokens(
    trained: ExperimentConfig, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run_export(trained, request(trained, "hf", tmp_path / "hf"))
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(result.files)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ours = load_generator(trained)
    ids = ours.tokenizer.encode(PROMPT)
    assert tokenizer(PROMPT)["input_ids"] == ids
    assert tokenizer.decode(ids) == PROMPT
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, ours.model(x), rtol=1e-5, atol=1e-5)
        theirs = model.generate(input_ids=x, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, len(ids) :]
    mine = generate(ours.model, x, SamplingParams(max_new_tokens=12, temperature=0.0))[0, len(ids) :]
    assert theirs.tolist() == mine.tolist()


def test_rotary_models_export_as_gpt_neox_and_qk_norm_is_refused(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    config = tiny_config("train.model.rotary=true", "train.model.tie_weights=false", "train.max_iters=10")
    prepare(config.prepare)
    train(config, quiet=True, console=Console(file=io.StringIO()))
    run_export(config, request(config, "hf", tmp_path / "neox"))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "neox")).eval()
    assert type(model).__name__ == "GPTNeoXForCausalLM"
    ours = load_generator(config)
    x = torch.tensor([ours.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, ours.model(x), rtol=1e-5, atol=1e-5)
    qk = tiny_config("train.model.qk_norm=true", "train.max_iters=5", f"train.out_dir='{tmp_path / 'qk'}'")
    train(qk, quiet=True, console=Console(file=io.StringIO()))
    with pytest.raises(ExportError, match=r"train\.model\.qk_norm .*has no counterpart") as info:
        run_export(qk, request(qk, "hf", tmp_path / "qk-export"))
    assert "\n" not in str(info.value)
    with pytest.raises(ExportError, match=r"train\.model\.rotary cannot be expressed in GGUF"):
        run_export(config, request(config, "gguf", tmp_path / "neox-gguf"))
    assert not (tmp_path / "qk-export").exists()


def test_bpe_and_tiktoken_tokenizers_export_exactly(tmp_path: Path, shakespeare_text: str, rank_files: Path) -> None:
    from transformers import AutoTokenizer

    german = "Sehr geehrte Damen und Herren! „Straße“ – Größe… 2019: 17,5 %\n\n  Einrückung"
    bpe = BpeTokenizer.train([shakespeare_text[:50_000], german * 20], 400)
    gpt2 = TiktokenTokenizer.from_file("gpt2", rank_files / "r50k_base.tiktoken", tmp_path / "cache")
    for name, ours in (("bpe", bpe), ("gpt2", gpt2)):
        to_pretrained_tokenizer(ours).save_pretrained(str(tmp_path / name))
        theirs = AutoTokenizer.from_pretrained(str(tmp_path / name))
        for text in (german, shakespeare_text[:2000]):
            ids = ours.encode(text)
            assert theirs(text)["input_ids"] == ids
            assert theirs.decode(ids) == text


def test_export_refuses_a_non_empty_folder_and_leaves_nothing_on_failure(
    trained: ExperimentConfig, tmp_path: Path, tiny_config: ConfigFactory
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not empty; use --force"):
        run_export(trained, request(trained, "hf", out))

    def disk_full(tmp: Path) -> None:
        assert any(tmp.iterdir())  # files were already written into the temporary folder
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match="export failed, nothing written"):
        run_export(trained, request(trained, "gguf", out, force=True), write_hook=disk_full)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left beside it
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # the old folder is untouched
    run_export(trained, request(trained, "gguf", out, force=True))
    assert [p.name for p in out.iterdir()] == ["tiny-f16.gguf"]
    untrained = tiny_config(f"train.out_dir='{tmp_path / 'none'}'")
    with pytest.raises(CheckpointError, match="nothing to export: no 'best' checkpoint yet"):
        run_export(untrained, request(untrained, "hf", tmp_path / "x"))


@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0"])
def test_gguf_file_reads_back_with_the_tokenizer_embedded(trained: ExperimentConfig, tmp_path: Path, kind: str) -> None:
    from gguf import GGMLQuantizationType, GGUFReader

    run_export(trained, request(trained, "gguf", tmp_path / kind, gguf_type=kind))
    reader = GGUFReader(str(tmp_path / kind / f"tiny-{kind}.gguf"))
    fields = reader.fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "gpt2"
    tokens = fields["tokenizer.ggml.tokens"]
    tokenizer = load_tokenizer(trained.prepare.dataset_dir / "tokenizer")
    assert len(tokens.data) == tokenizer.vocab_size
    types = {t.name: t.tensor_type for t in reader.tensors}
    expected = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16, "q8_0": GGMLQuantizationType.Q8_0}[
        kind
    ]
    assert types["blk.0.attn_qkv.weight"] == expected
    assert types["blk.0.attn_norm.bias"] == GGMLQuantizationType.F32
    assert len(reader.tensors) == 5 + 12 * trained.train.model.n_layer
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    if kind == "f32":
        ours = load_generator(trained).model.wte.weight.detach().numpy()
        assert np.array_equal(np.asarray(embedding.data).reshape(ours.shape), ours)


def test_ollama_export_writes_a_modelfile_and_the_command(trained: ExperimentConfig, tmp_path: Path) -> None:
    result = run_export(trained, request(trained, "ollama", tmp_path / "ollama"))
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text("utf-8")
    assert modelfile.startswith("FROM ./tiny-f16.gguf\n")
    assert f"PARAMETER temperature {trained.sample.temperature}" in modelfile
    assert f"PARAMETER num_ctx {trained.train.model.block_size}" in modelfile
    assert 'PARAMETER stop "\\n\\n"' in modelfile  # a char model has no end token: it stops at a blank line
    assert any(note.startswith("create the Ollama model with: ollama create tiny -f ") for note in result.notes)
