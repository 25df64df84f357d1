from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.core.errors import ConfigError
from ml_playground.core.hub import _not_loadable, load_pretrained_tokenizer
from ml_playground.core.tokenizer import PretrainedTokenizer, load_tokenizer
from ml_playground.families.hf_lora.hub import load_pretrained_model
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm

pytestmark = pytest.mark.unit


def test_a_folder_that_is_not_a_model_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ConfigError, match=r"train\.model\.base_model: cannot load the tokenizer from the folder"):
        load_pretrained_tokenizer(str(tmp_path))
    with pytest.raises(ConfigError, match="cannot load base model from the folder"):
        load_pretrained_model(str(tmp_path), revision=None, dtype=__import__("torch").float32)


def test_the_offline_and_online_messages_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    online = str(_not_loadable("base model", "org/model", "train.base_model", OSError("x")))
    assert "it could not be downloaded" in online
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = str(_not_loadable("base model", "org/model", "train.base_model", OSError("x")))
    assert "downloads are off (HF_HUB_OFFLINE=1)" in offline


def test_pretrained_tokenizer_round_trips_and_saves_beside_our_spec(tmp_path: Path, shared_data: Path) -> None:
    text = (shared_data / "bundestag" / "19009.txt").read_text("utf-8-sig")
    model_dir = build_tiny_causal_lm(tmp_path / "tiny", [text])
    tokenizer = PretrainedTokenizer.from_pretrained(str(model_dir))
    assert tokenizer.kind == "hf"
    sample = "Sehr geehrte Damen und Herren! Straße, Größe."
    ids = tokenizer.encode_array(sample)
    assert tokenizer.decode(ids.tolist()) == sample
    assert tokenizer.eos_token_id == 0
    tokenizer.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "hf" / "tokenizer.json").is_file()
    again = load_tokenizer(tmp_path / "saved")
    assert again.encode(sample) == ids.tolist()
