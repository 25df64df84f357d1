"""A ``.gguf`` file as a base model: read by transformers, cached once as a Hugging Face folder, bad files refused.

The GGUF here is a real one made locally: the tiny trained GPT exported by our own GGUF writer
(llama.cpp's gpt2 architecture, which transformers also reads).
"""

from __future__ import annotations

import io
from pathlib import Path

import gguf
import pytest
import torch
from rich.console import Console

from ml_playground.commands.export import run_export
from ml_playground.commands.train import train
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.errors import ConfigError
from ml_playground.core.gguf_import import DONE_MARKER, gguf_header, hf_folder_for
from ml_playground.core.hub import load_pretrained_tokenizer
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.export.request import ExportRequest
from ml_playground.families.hf_lora.hub import load_pretrained_model
from ml_playground.sampling.runner import load_model
from tests.conftest import tiny_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def export_gguf(config: ExperimentConfig, out: Path) -> Path:
    run_export(config, ExportRequest(format="gguf", out_dir=out, checkpoint="best", name="tiny", gguf_type="f32"))
    return out / "tiny-f32.gguf"


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory: pytest.TempPathFactory, shakespeare_text: str) -> ExperimentConfig:
    """A tiny GPT on a byte-level BPE (what transformers' GPT-2 tokenizer reads), trained for 5 steps.

    Its context is 1024 because transformers builds a GPT-2 read from GGUF with 1024 positions whatever
    the file says (``gpt2.context_length`` is not mapped)."""
    root = tmp_path_factory.mktemp("bpe_gguf")
    corpus = root / "corpus.txt"
    corpus.write_text(shakespeare_text[:30_000], encoding="utf-8")
    settings = [*tiny_overrides(root, corpus), "prepare.tokenizer='bpe'", "prepare.bpe_vocab_size=300"]
    config = load_config(
        experiment_config_path("shakespeare"), [*settings, "train.max_iters=5", "train.model.block_size=1024"]
    )
    prepare(config.prepare)
    train(config, quiet=True, console=Console(file=io.StringIO()))
    return config


@pytest.fixture(scope="module")
def exported(bpe_model: ExperimentConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gguf(bpe_model, tmp_path_factory.mktemp("gguf"))


def test_a_gguf_file_loads_as_the_same_model_and_is_converted_once(
    bpe_model: ExperimentConfig, exported: Path, tmp_path: Path
) -> None:
    ours = load_model(bpe_model)
    model = load_pretrained_model(str(exported), revision=None, dtype=torch.float32, cache_dir=tmp_path)
    tokenizer = load_pretrained_tokenizer(str(exported), cache_dir=tmp_path)
    text = "ROMEO:\nWhat light"
    ids = ours.tokenizer.encode(text)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits
        mine = ours.module(torch.tensor([ids]))
    torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=0)
    folders = list((tmp_path / "gguf").iterdir())
    assert len(folders) == 1
    assert (folders[0] / DONE_MARKER).is_file()
    assert (folders[0] / "model.safetensors").is_file()
    stamp = (folders[0] / "model.safetensors").stat().st_mtime_ns
    read: list[Path] = []

    def header(path: Path, key: str) -> dict[str, str]:
        read.append(path)
        return gguf_header(path, key)

    assert hf_folder_for(str(exported), tmp_path, "train.model.base_model", header) == str(folders[0])
    assert (folders[0] / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not converted again
    assert read == []  # nor the file parsed again
    assert hf_folder_for(str(exported), tmp_path / "elsewhere", "train.model.base_model", header) != str(folders[0])
    assert read == [exported]  # a cache without it: read and converted


def test_bad_gguf_files_are_one_line_errors(
    exported: Path, trained_tiny: tuple[ExperimentConfig, list[str]], tmp_path: Path
) -> None:
    key = "train.model.base_model"
    with pytest.raises(ConfigError, match="does not exist") as missing:
        hf_folder_for(str(tmp_path / "nowhere.gguf"), tmp_path, key)
    assert missing.value.key == key
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(exported.read_bytes()[:200])
    with pytest.raises(ConfigError, match="is not a readable GGUF file"):
        hf_folder_for(str(truncated), tmp_path, key)
    other = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(other), "mystery")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigError, match=r"architecture 'mystery' cannot be read by transformers \(it reads: .*llama"):
        hf_folder_for(str(other), tmp_path, key)
    # A character vocabulary exported for llama.cpp has no byte-level alphabet; transformers' GPT-2
    # tokenizer needs one.
    char_model = export_gguf(trained_tiny[0], tmp_path / "char")
    with pytest.raises(ConfigError, match=r"cannot read .* with transformers .*out of vocabulary"):
        hf_folder_for(str(char_model), tmp_path, key)
    assert not (tmp_path / "gguf").exists()  # nothing half-written
    assert hf_folder_for("Qwen/Qwen2.5-1.5B", tmp_path, key) == "Qwen/Qwen2.5-1.5B"  # not a GGUF: untouched
