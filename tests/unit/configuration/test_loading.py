from __future__ import annotations

import re
from pathlib import Path

import pytest

from ml_playground.configuration import experiment_config_path, list_experiments, load_config
from ml_playground.configuration.loading import parse_override
from ml_playground.configuration.models import GptModelConfig
from ml_playground.core.errors import ConfigError

pytestmark = pytest.mark.unit

SHAKESPEARE = experiment_config_path("shakespeare")


def test_shipped_config_loads_with_the_documented_contract() -> None:
    config = load_config(SHAKESPEARE)
    assert config.prepare.tokenizer == "char"
    assert config.train.model.n_layer == 4
    assert config.train.optim.learning_rate == pytest.approx(2e-3)
    assert config.sample.checkpoint == "best"


def test_overrides_are_typed_like_the_file() -> None:
    config = load_config(
        SHAKESPEARE,
        ["train.max_iters=17", "train.optim.learning_rate=3e-4", "sample.prompt=ROMEO:", "train.model.compile=true"],
    )
    assert config.train.max_iters == 17
    assert config.train.optim.learning_rate == pytest.approx(3e-4)
    assert config.sample.prompt == "ROMEO:"
    assert config.train.model.compile is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a.b=1", (["a", "b"], 1)),
        ("a.b='x y'", (["a", "b"], "x y")),
        ("a.b=hello world", (["a", "b"], "hello world")),
        ("a=[1, 2]", (["a"], [1, 2])),
    ],
)
def test_parse_override(text: str, expected: tuple[list[str], object]) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=3", "a..b=1", ".a=1"])
def test_malformed_override_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"section.key=value"):
        parse_override(text)


def test_unknown_key_names_file_and_dotted_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(SHAKESPEARE.read_text("utf-8").replace("[train.model]", "[train.model]\nn_layers = 3"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: train.model.n_layers: unknown key"


def test_wrong_type_from_override_says_where_it_came_from() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(SHAKESPEARE, ["train.max_iters=lots"])
    message = str(info.value)
    assert message.startswith(f"{SHAKESPEARE}: train.max_iters: ")
    assert "'lots'" in message
    assert "--set train.max_iters=lots" in message


def test_several_problems_are_counted() -> None:
    with pytest.raises(ConfigError, match=r"and 1 more problem\)"):
        load_config(SHAKESPEARE, ["train.max_iters=0", "train.eval_interval=0"])


def test_missing_required_section_and_cross_field_rule(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[prepare]\ninput_path = 'x'\ndataset_dir = 'd'\n")
    with pytest.raises(ConfigError, match="train: required key is missing"):
        load_config(path)
    with pytest.raises(ConfigError, match="divisible by n_head"):
        load_config(SHAKESPEARE, ["train.model.n_embd=130"])


def test_override_into_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"train\.max_iters is a value, not a section"):
        load_config(SHAKESPEARE, ["train.max_iters.x=1"])


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_experiments_are_listed_with_a_summary() -> None:
    listed = dict(list_experiments())
    assert "shakespeare" in listed
    assert "Tiny Shakespeare" in listed["shakespeare"]


def test_speedrun_config_uses_the_modern_options() -> None:
    config = load_config(SHAKESPEARE.with_name("speedrun.toml"))
    model = config.train.model
    assert (model.rotary, model.qk_norm, model.activation, model.tie_weights) == (True, True, "relu2", False)
    assert config.train.early_stopping.target_val_loss == pytest.approx(1.89)
    with pytest.raises(ConfigError, match="rotary needs an even head width"):
        load_config(SHAKESPEARE, ["train.model.rotary=true", "train.model.n_embd=12", "train.model.n_head=4"])
    with pytest.raises(ConfigError, match="condition_bias needs condition_embedding = true"):
        load_config(SHAKESPEARE, ["train.model.condition_bias=true"])


@pytest.mark.parametrize("name", ["bundestag_char", "bundestag_tiktoken", "bundestag_qwen15b_lora_mps"])
def test_every_shipped_experiment_loads_and_is_listed(name: str) -> None:
    config = load_config(experiment_config_path(name))
    assert config.prepare.format == "bundestag"
    assert dict(list_experiments())[name]


def test_fine_tuning_settings_hang_together() -> None:
    lora = experiment_config_path("bundestag_qwen15b_lora_mps")
    config = load_config(lora)
    assert config.prepare.hf_tokenizer == config.train.model.base_model == "Qwen/Qwen2.5-1.5B"  # type: ignore[attr-defined]
    assert config.train.sequence_length == 512
    local = load_config(lora, ["train.model.base_model='/models/tiny'"])
    assert local.prepare.hf_tokenizer == "/models/tiny"
    with pytest.raises(ConfigError, match=r"config\.toml: train.model.kind = 'hf_lora' needs .*prepare.tokenizer"):
        load_config(lora, ["prepare.tokenizer='char'"])
    with pytest.raises(
        ConfigError, match=r"prepare\.tokenizer = 'hf' needs prepare\.hf_tokenizer or train\.model\.base_model"
    ):
        load_config(SHAKESPEARE, ["prepare.tokenizer='hf'"])
    with pytest.raises(ConfigError, match=r"train\.data\.block_size: is now train\.model\.block_size"):
        load_config(SHAKESPEARE, ["train.data.block_size=32"])
    assert load_config(SHAKESPEARE).train.sequence_length == 64


def test_muon_only_where_it_applies() -> None:
    assert load_config(SHAKESPEARE, ["train.optim.name='muon'"]).train.optim.name == "muon"
    lora = experiment_config_path("bundestag_qwen15b_lora_mps")
    with pytest.raises(ConfigError, match=r"train: .*'muon' is for train\.model\.kind = 'gpt' \(this is 'hf_lora'\)"):
        load_config(lora, ["train.optim.name='muon'"])
    with pytest.raises(ConfigError, match=r"train: .*FSDP shards"):
        load_config(SHAKESPEARE, ["train.optim.name='muon'", "train.distributed.strategy='fsdp'"])
    with pytest.raises(ConfigError, match=r"train: .*'fsdp' is built for train\.model\.kind = 'gpt'.*use ddp"):
        load_config(lora, ["train.distributed.strategy='fsdp'"])
    assert load_config(SHAKESPEARE, ["train.distributed.strategy='fsdp'"]).train.distributed.strategy == "fsdp"
    with pytest.raises(ConfigError, match=r"train\.optim\.name"):
        load_config(SHAKESPEARE, ["train.optim.name='sgd'"])
    with pytest.raises(ConfigError, match=r"train\.model\.linear_kernel"):
        load_config(SHAKESPEARE, ["train.model.linear_kernel='mkl'"])


def test_the_model_family_is_explicit_and_its_keys_are_its_own() -> None:
    lora = experiment_config_path("bundestag_qwen15b_lora_mps")
    shakespeare = load_config(SHAKESPEARE)
    assert shakespeare.train.model.kind == "gpt"
    assert load_config(lora).train.model.kind == "hf_lora"
    untagged = load_config(SHAKESPEARE, ["train.model={n_layer=3}"])  # kind defaults to gpt
    assert isinstance(untagged.train.model, GptModelConfig)
    assert untagged.train.model.n_layer == 3
    with pytest.raises(ConfigError, match=r"config\.toml: train\.model\.base_model: unknown key, from --set"):
        load_config(SHAKESPEARE, ["train.model.base_model='/models/tiny'"])
    for gpt_only in ("train.model.ema.enabled=true", "train.model.qk_norm=true", "train.model.n_layer=2"):
        key = gpt_only.split("=")[0].rsplit(".", 1)[0] if ".ema." in gpt_only else gpt_only.split("=")[0]
        with pytest.raises(ConfigError, match=rf"{re.escape(key)}: unknown key"):
            load_config(lora, [gpt_only])
    assert load_config(lora, ["train.model.linear_kernel='aten'"]).train.model.linear_kernel == "aten"  # both have it
    with pytest.raises(ConfigError, match=r"train\.model: unknown model family 'rnn'; known: 'gpt', 'hf_lora'"):
        load_config(SHAKESPEARE, ["train.model.kind='rnn'"])
    with pytest.raises(ConfigError, match=r"sample\.weights = 'ema' needs train\.model\.ema"):
        load_config(lora, ["sample.weights='ema'"])
    dumped = shakespeare.model_dump(mode="json")["train"]["model"]
    assert dumped["kind"] == "gpt"
    assert dumped["n_layer"] == 4


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        (
            "train.base_model='Qwen/Qwen2.5-0.5B'",
            "train.base_model: is now train.model.base_model: fine-tuning is its own",
        ),
        ("train.lora.r=4", "train.lora: is now train.model.lora"),
        (
            "train.gradient_checkpointing=true",
            "train.gradient_checkpointing: is now train.model.gradient_checkpointing",
        ),
        (
            "train.ema.enabled=true",
            'train.ema: is now train.model.ema (a key of the GPT family, [train.model] kind = "gpt"), '
            "from --set train.ema.enabled=true",
        ),
        ("train.compile=true", "train.compile: is now train.model.compile"),
        ("train.linear_kernel='aten'", "train.linear_kernel: is now train.model.linear_kernel"),
        ("train.data.block_size=64", "train.data.block_size: is now train.model.block_size"),
    ],
)
def test_a_config_in_the_old_shape_says_how_to_write_it_now(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(SHAKESPEARE, [override])
    message = str(info.value)
    assert str(SHAKESPEARE) in message
    assert fragment in message
    assert "\n" not in message
