"""Header-conditioned data for the LoRA family, on a tiny local Qwen2 and two real XML sessions.

prepare (the base's tokenizer, a plain-text header per speech, never a target) -> record-aware windows
that start at a header and keep each target under its own record's header -> LoRA training -> a
checkpoint that carries the conditions -> sampling asked for a party, with and without guidance.
"""

from __future__ import annotations

import asyncio
import io
import math
from pathlib import Path

import httpx
import numpy as np
import pytest
from rich.console import Console

from ml_playground.commands.train import train
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.errors import ConfigError
from ml_playground.data_pipeline.batches import IGNORE_INDEX, BatchSampler, RecordWindows, open_dataset
from ml_playground.data_pipeline.header import FIELD_TOKENS, format_header
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.data_pipeline.speeches import iter_records
from ml_playground.evaluation.analysis import analyze
from ml_playground.evaluation.header_check import check_header, header_scores
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm
from ml_playground.families.registry import family_of
from ml_playground.sampling.chat import chat
from ml_playground.sampling.debate import run_debate
from ml_playground.sampling.runner import sample
from ml_playground.serving.app import create_app
from ml_playground.serving.server import build_served
from tests.lora_helpers import assert_killed_run_resumes_to, run_paths

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def settings(root: Path, base: Path, archive: Path, run: str = "run") -> list[str]:
    return [
        *run_paths(root, base, archive, run),
        "prepare.val_fraction=0.2",
        "train.num_threads=1",
        "train.model.block_size=160",
        "train.model.compile=false",  # tiny models train eager here; compiled layers have tests of their own
        "train.max_iters=6",
        "train.eval_interval=3",
        "train.eval_max_tokens=512",
        "train.checkpoint.interval=3",
        "sample.max_new_tokens=6",
        "sample.num_samples=1",
    ]


@pytest.fixture(scope="module")
def conditioned(tmp_path_factory: pytest.TempPathFactory, xml_archive: Path, shared_data: Path) -> ExperimentConfig:
    root = tmp_path_factory.mktemp("conditioned")
    text = (shared_data / "bundestag" / "19009.txt").read_text("utf-8-sig")
    base = build_tiny_causal_lm(root / "qwen2", [text])
    config = load_config(experiment_config_path("speakger_smollm2"), settings(root, base, xml_archive))
    prepare(config.prepare)
    train(config, console=Console(file=io.StringIO()), install_signal_handlers=False)
    return config


def test_a_killed_conditioned_run_resumes_to_the_same_adapters(
    conditioned: ExperimentConfig, xml_archive: Path
) -> None:
    root = conditioned.train.out_dir.parent
    base = Path(conditioned.train.model.base_model)  # type: ignore[attr-defined]
    overrides = settings(root, base, xml_archive, run="killed")
    assert_killed_run_resumes_to(conditioned.train.out_dir, root / "killed", overrides, "speakger_smollm2")


def test_windows_start_at_a_header_and_targets_stay_under_their_record(conditioned: ExperimentConfig) -> None:
    dataset = open_dataset(conditioned.prepare.dataset_dir)
    assert dataset.meta["conditioning"] == "header"
    assert dataset.meta["record_index"]
    assert dataset.train_index is not None
    assert dataset.train_mask is not None
    tokenizer = family_of(conditioned).load_for_inference(conditioned, "last").tokenizer
    windows = RecordWindows(dataset.train, dataset.train_mask, dataset.train_index, 160)
    starts = dataset.train_index[:, 0]
    for window in range(min(len(windows), 40)):
        ids, keep = windows.row(window)
        text = tokenizer.decode(ids.tolist())
        assert text.startswith((FIELD_TOKENS["speaker"], FIELD_TOKENS["party"])), text[:80]
        at = 0
        for seg in range(int(windows.window_first[window]), int(windows.window_first[window + 1])):
            header_record = np.searchsorted(starts, windows.seg_header_start[seg], side="right") - 1
            body_record = np.searchsorted(starts, windows.seg_body_start[seg], side="right") - 1
            assert header_record == body_record  # every target under its own record's header
            header_len, body_len = int(windows.seg_header_len[seg]), int(windows.seg_body_len[seg])
            assert not keep[at : at + header_len].any()  # the header is given, never a target
            assert keep[at + header_len : at + header_len + body_len].all()
            at += header_len + body_len
    sampler = BatchSampler(
        dataset.train,
        block_size=160,
        batch_size=4,
        seed=1,
        mask=dataset.train_mask,
        index=dataset.train_index,
    )
    x, y = sampler.batch(0)
    assert all(bool((y[row] != IGNORE_INDEX).any()) for row in range(len(y)))
    for row in range(len(x)):
        assert tokenizer.decode(x[row].tolist()).startswith((FIELD_TOKENS["speaker"], FIELD_TOKENS["party"]))


def test_the_checkpoint_carries_the_conditions_and_sampling_honours_them(conditioned: ExperimentConfig) -> None:
    model = family_of(conditioned).load_for_inference(conditioned, "last")
    assert model.conditions is not None
    parties = list(model.conditions["parties"])
    assert "SPD" in parties
    assert model.context_length > conditioned.train.sequence_length  # the base's own context
    plain = sample(conditioned, emit=lambda _: None)
    guided = sample(
        conditioned.model_copy(update={"sample": conditioned.sample.model_copy(update={"guidance": 3.0})}),
        emit=lambda _: None,
    )
    assert plain[0].path.read_text("utf-8").startswith(FIELD_TOKENS["party"] + "SPD")
    assert guided[0].path.read_text("utf-8").startswith(FIELD_TOKENS["party"] + "SPD")
    unknown = conditioned.model_copy(update={"sample": conditioned.sample.model_copy(update={"party": "SDP"})})
    with pytest.raises(ConfigError, match=r"unknown party 'SDP' in this dataset; closest known: SPD"):
        sample(unknown, emit=lambda _: None)

    # analyze's header check reads this family's model too: scored together as each header alone
    speeches = list(iter_records(conditioned.prepare.dataset_dir))[-8:]
    check = check_header(model.module, model.tokenizer, speeches, parties, 2, model.context_length, text_tokens=24)
    assert check.speeches > 0
    assert math.isfinite(check.gain_nats_per_token)
    headers = [model.tokenizer.encode(format_header({"party": p, "year": 2019})) for p in parties]
    text = model.tokenizer.encode(speeches[-1].text)[:24]
    alone = [header_scores(model.module, [h], text)[0] for h in headers]
    assert header_scores(model.module, headers, text) == pytest.approx(alone, abs=1e-3)


def refusals(config: ExperimentConfig, asked: dict[str, object]) -> dict[str, str]:
    """What each command says when asked for ``asked`` (sample fields) on ``config``'s model."""
    said: dict[str, str] = {}
    with_fields = config.model_copy(update={"sample": config.sample.model_copy(update=asked)})
    for name, command in (
        ("sample", lambda: sample(with_fields, emit=lambda _: None)),
        ("chat", lambda: chat(with_fields, read_line=lambda _: None, emit=lambda _: None)),
    ):
        with pytest.raises(ConfigError) as info:
            command()
        said[name] = info.value.message
    served = build_served(config, "tiny")
    try:
        body = {"prompt": "", "max_tokens": 2, **{k: v for k, v in asked.items() if k != "guidance"}}
        if "guidance" in asked:
            body["guidance"] = asked["guidance"]

        async def post() -> httpx.Response:
            transport = httpx.ASGITransport(app=create_app(served))
            async with httpx.AsyncClient(transport=transport, base_url="http://tiny") as client:
                return await client.post("/v1/completions", json=body)

        response = asyncio.run(post())
    finally:
        served.engine.stop()
    assert response.status_code == 400, response.text
    said["serve"] = response.json()["error"]["message"]
    return said


def test_every_command_refuses_an_unknown_party_alike(conditioned: ExperimentConfig) -> None:
    said = refusals(conditioned, {"party": "SDP"})
    with pytest.raises(ConfigError) as info:
        run_debate(conditioned, "Rente", ["SDP"], 1, emit=lambda _: None)
    said["debate"] = info.value.message
    assert set(said) == {"sample", "chat", "serve", "debate"}
    for command, message in said.items():
        assert "unknown party 'SDP'" in message, command
        assert "closest known: SPD" in message, command


def test_conditions_and_guidance_on_an_unconditioned_model_are_refused_alike(
    trained_tiny: tuple[ExperimentConfig, list[str]],
) -> None:
    config, _ = trained_tiny
    for asked, field in (({"party": "SPD"}, "party"), ({"guidance": 2.0}, "guidance")):
        said = refusals(config, asked)
        for command, message in said.items():
            assert message.startswith(field) or f"{field} applies" in message, (command, message)
            assert "header-conditioned" in message, (command, message)
    for command, run in (
        ("debate", lambda: run_debate(config, "Rente", ["SPD"], 1, emit=lambda _: None)),
        ("analyze", lambda: analyze(config, per_party=1, emit=lambda _: None)),
    ):
        with pytest.raises(ConfigError, match=f"{command} needs a header-conditioned model"):
            run()
