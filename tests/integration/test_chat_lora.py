"""Chat fine-tuning on a tiny local Qwen2, from chat JSONL through the checkpoint to serve, eval and export.

prepare (format chat, a template of our own instead of the base's) -> one conversation per window ->
LoRA training -> a checkpoint that records the template -> serve renders exactly that template and
stops at its end of turn; a plain-text fine-tune of the same base is served as a completion model.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from rich.console import Console

from ml_playground.commands.export import run_export
from ml_playground.commands.train import train
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.errors import ConfigError, DataError
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.data_pipeline.batches import IGNORE_INDEX, BatchSampler, RecordWindows, open_dataset
from ml_playground.data_pipeline.chat_encoding import ChatEncoder
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.evaluation.runner import evaluate_checkpoint
from ml_playground.export.request import ExportRequest
from ml_playground.families.hf_lora.gguf import read_back
from ml_playground.families.registry import family_of
from ml_playground.sampling.chat import chat
from ml_playground.sampling.runner import prompt_ids_for
from ml_playground.serving.app import create_app
from ml_playground.serving.engine import Delta, Event, GenerationRequest
from ml_playground.serving.server import build_served
from tests.chat_helpers import EXPERIMENT, OUR_TEMPLATE, settings
from tests.lora_helpers import assert_killed_run_resumes_to

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_each_window_holds_one_conversation_from_its_start(chat_run: ExperimentConfig) -> None:
    dataset = open_dataset(chat_run.prepare.dataset_dir)
    assert dataset.whole_records
    assert dataset.meta["chat"]["template"] == OUR_TEMPLATE
    assert dataset.meta["chat"]["end_of_turn"] == ["<|im_end|>"]
    assert dataset.train_index is not None
    assert dataset.train_mask is not None
    windows = RecordWindows(dataset.train, dataset.train_mask, dataset.train_index, 192, whole=True)
    assert len(windows) == len(dataset.train_index)  # never two conversations in one window
    for window, (start, _, length) in enumerate(dataset.train_index.tolist()):
        ids, keep = windows.row(window)
        assert ids[:length].tolist() == dataset.train[start : start + length].tolist()
        assert not keep[length:].any()  # the padding after it is never a target
    sampler = BatchSampler(
        dataset.train, block_size=192, batch_size=4, seed=1, mask=dataset.train_mask, index=dataset.train_index,
        whole=True,
    )  # fmt: skip
    x, y = sampler.batch(0)
    tokenizer = family_of(chat_run).load_for_inference(chat_run, "last").tokenizer
    for row in range(len(x)):
        assert tokenizer.decode(x[row].tolist()).startswith("<|im_start|>system\nAntworte kurz.")
        assert tokenizer.decode(y[row][y[row] != IGNORE_INDEX].tolist()).endswith("<|im_end|>")
    with pytest.raises(DataError, match="run prepare again with this block_size"):
        RecordWindows(dataset.train, dataset.train_mask, dataset.train_index, 16, whole=True)


def post(config: ExperimentConfig, path: str, body: dict[str, Any]) -> httpx.Response:
    served = build_served(config, "tiny")

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(served))
        async with httpx.AsyncClient(transport=transport, base_url="http://tiny") as client:
            return await client.post(path, json=body)

    try:
        return asyncio.run(send())
    finally:
        served.engine.stop()


MESSAGES = [{"role": "user", "content": "Wann kommt das Gesetz?"}]


def test_serve_renders_the_template_the_checkpoint_recorded(chat_run: ExperimentConfig) -> None:
    model = family_of(chat_run).load_for_inference(chat_run, "last")
    assert model.chat_ids is not None
    base_tokenizer = load_tokenizer_of(chat_run)
    expected = ChatEncoder(base_tokenizer, OUR_TEMPLATE).render(MESSAGES, generation_prompt=True)
    assert model.tokenizer.decode(model.chat_ids(MESSAGES)) == expected  # ours, not the base's own template
    assert base_tokenizer.convert_tokens_to_ids("<|im_end|>") in model.stop_ids
    system = chat_run.model_copy(
        update={"sample": chat_run.sample.model_copy(update={"system": "Sei knapp.", "prompt": "Wann?"})}
    )
    _, ids, _ = prompt_ids_for(system, model, "Wann?")
    assert model.tokenizer.decode(ids) == ChatEncoder(base_tokenizer, OUR_TEMPLATE).render(
        [{"role": "system", "content": "Sei knapp."}, {"role": "user", "content": "Wann?"}], generation_prompt=True
    )
    response = post(chat_run, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 4})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == len(model.chat_ids(MESSAGES))


def test_serve_batches_the_fine_tune_and_each_answer_is_the_one_alone(chat_run: ExperimentConfig) -> None:
    """The hf_lora family's batch decoder in serve's engine: requests that arrive together share forward
    passes, and each greedy answer equals the one the same request gets alone."""
    served = build_served(chat_run, "tiny")
    questions = ["Wann kommt das Gesetz?", "Warum?", "Was sagt die Ministerin zum Haushalt des Jahres?", "Wer?"]
    assert served.model.chat_ids is not None
    requests = [
        GenerationRequest(served.model.chat_ids([{"role": "user", "content": q}]), SamplingParams(16, temperature=0.0))
        for q in questions
    ]

    def run(batch: list[GenerationRequest]) -> list[str]:
        texts = [""] * len(batch)
        ended = [threading.Event() for _ in batch]

        def sink(i: int) -> Callable[[Event], None]:
            def deliver(event: Event) -> None:
                if isinstance(event, Delta):
                    texts[i] += event.text
                else:
                    ended[i].set()

            return deliver

        for i, req in enumerate(batch):
            served.engine.submit(req, sink(i))
        assert all(e.wait(60) for e in ended)
        return texts

    try:
        assert served.model.batch_decoder is not None
        alone = [run([req])[0] for req in requests]
        assert served.engine.largest_batch == 1
        together = run(requests)
    finally:
        served.engine.stop()
    assert together == alone
    assert served.engine.largest_batch > 1  # the requests were decoded in one forward pass a step


def load_tokenizer_of(config: ExperimentConfig) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(config.train.model.base_model))  # type: ignore[attr-defined]


def test_a_plain_text_fine_tune_is_a_completion_model(chat_run: ExperimentConfig, shared_data: Path) -> None:
    root = chat_run.train.out_dir.parent
    plain = load_config(
        experiment_config_path("bundestag_smollm2_lora"),  # speeches as plain text behind a speaker line
        [
            f"train.model.base_model='{chat_run.train.model.base_model}'",  # type: ignore[attr-defined]
            f"prepare.input_path='{shared_data / 'bundestag' / '19009.txt'}'",
            f"prepare.dataset_dir='{root / 'plain-dataset'}'",
            f"train.out_dir='{root / 'plain-run'}'",
            "train.num_threads=1",
            "train.model.compile=false",
            "train.model.block_size=64",
            "train.max_iters=2",
            "train.eval_interval=2",
            "train.eval_max_tokens=256",
            "train.model.save_merged_on_best=false",
        ],
    )
    prepare(plain.prepare)
    train(plain, console=Console(file=io.StringIO()), install_signal_handlers=False)
    assert family_of(plain).load_for_inference(plain, "last").chat_ids is None
    response = post(plain, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 2})
    assert response.status_code == 400
    assert "has no chat template; use /v1/completions" in response.json()["error"]["message"]
    asked = plain.model_copy(update={"sample": plain.sample.model_copy(update={"chat": True})})
    with pytest.raises(ConfigError, match=r"the model has no chat template; set sample\.chat = false"):
        chat(asked, read_line=lambda _: None, emit=lambda _: None)
    out = run_export(plain, ExportRequest("ollama", root / "plain-export", "last"), which=lambda _: None).out_dir
    modelfile = (out / "Modelfile").read_text("utf-8")
    assert 'TEMPLATE """{{ .Prompt }}"""' in modelfile
    assert read_back(next(out.glob("*.gguf")))["chat_template"] is None


def test_the_export_carries_the_trained_template_and_its_stop(chat_run: ExperimentConfig) -> None:
    root = chat_run.train.out_dir.parent
    out = run_export(chat_run, ExportRequest("ollama", root / "export", "last"), which=lambda _: None).out_dir
    assert read_back(next(out.glob("*.gguf")))["chat_template"] == OUR_TEMPLATE
    assert 'PARAMETER stop "<|im_end|>"' in (out / "Modelfile").read_text("utf-8")


def test_eval_asks_the_validation_questions_again(chat_run: ExperimentConfig) -> None:
    report = evaluate_checkpoint(chat_run, questions=3)
    assert report.chat is not None
    assert report.chat.questions == 3
    assert 0.0 <= report.chat.stop_rate <= 1.0
    assert all(len(answer.answer) > 0 or answer.stopped for answer in report.chat.answers)
    assert report.chat.reference_german_share > 0.2  # the references are German protocol text
    assert {"stop_rate", "answer_tokens", "german_share"} <= report.to_dict().keys()
    assert np.isfinite(report.val_loss)


def test_a_killed_chat_run_resumes_to_the_same_adapters(chat_run: ExperimentConfig) -> None:
    root = chat_run.train.out_dir.parent
    base = Path(chat_run.train.model.base_model)  # type: ignore[attr-defined]
    overrides = settings(root, base, root / "chat.jsonl", run="killed")
    assert_killed_run_resumes_to(chat_run.train.out_dir, root / "killed", overrides, EXPERIMENT)
