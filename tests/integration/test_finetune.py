"""LoRA fine-tuning end to end on a tiny real Qwen2 model built locally (no downloads).

prepare (the base model's tokenizer, speeches packed with EOS, header masked) -> train on our
loop -> adapters in PEFT's format, loadable by plain PEFT -> merged model equal to base+adapters
-> sampling from adapters and from the merged model -> kill/resume -> bad inputs.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from ml_playground.commands.train import train
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.errors import CheckpointError, ConfigError, UserError
from ml_playground.data_pipeline.batches import open_dataset
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.evaluation.runner import evaluate_checkpoint
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm
from ml_playground.sampling.runner import sample

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HELPER = Path(__file__).with_name("train_with_kill.py")
EXPERIMENT = "bundestag_qwen15b_lora_mps"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    text = (shared_data / "bundestag" / "19009.txt").read_text("utf-8-sig")
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "qwen2", [text])


def overrides(root: Path, base_model: Path, shared_data: Path) -> list[str]:
    return [
        f"train.model.base_model='{base_model}'",
        f"prepare.input_path='{shared_data / 'bundestag' / '19009.txt'}'",
        f"prepare.dataset_dir='{root / 'dataset'}'",
        f"train.out_dir='{root / 'run'}'",
        "train.device='cpu'",
        "train.num_threads=1",
        "train.model.block_size=64",
        "train.model.compile=false",  # tiny models train eager here; compiled layers have tests of their own
        "train.data.batch_size=4",
        "train.data.grad_accum_steps=1",
        "train.max_iters=30",
        "train.eval_interval=10",
        "train.eval_iters=2",
        "train.log_interval=10",
        "train.checkpoint.interval=10",
        "train.checkpoint.keep_last=5",
        "train.schedule.warmup_iters=3",
        "train.optim.learning_rate=5e-3",
        "train.model.lora.r=8",
        "train.model.lora.dropout=0.1",
        "sample.max_new_tokens=12",
    ]


ConfigFactory = Callable[..., ExperimentConfig]


def run_helper(settings: list[str], mode: str, step: int) -> subprocess.CompletedProcess[str]:
    """``train_with_kill.py`` on this experiment in a child process (``mode``: none or after-step)."""
    command = [sys.executable, str(HELPER), json.dumps(settings), mode, str(step), EXPERIMENT]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, shared_data: Path) -> ExperimentConfig:
    root = tmp_path_factory.mktemp("lora")
    config = load_config(
        experiment_config_path(EXPERIMENT),
        [*overrides(root, tiny_model, shared_data), "train.model.save_merged_on_best=true"],
    )
    prepare(config.prepare)
    train(config, quiet=True, console=Console(file=io.StringIO()))
    return config


def test_prepared_data_keeps_eos_in_the_loss_although_pad_is_eos(trained: ExperimentConfig, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # as with Qwen
    dataset = open_dataset(trained.prepare.dataset_dir)
    assert dataset.train_mask is not None
    ids, mask = np.asarray(dataset.train), np.asarray(dataset.train_mask)
    eos_positions = np.flatnonzero(ids == tokenizer.eos_token_id)
    assert len(eos_positions) > 10  # one per speech
    assert mask[eos_positions].all()  # every EOS is a target of the loss
    # the header ("Präsident Dr. Wolfgang Schäuble:\n") after each EOS is masked, the speech text is not
    first_header = tokenizer("Präsident Dr. Wolfgang Schäuble:\n", add_special_tokens=False)["input_ids"]
    assert ids[: len(first_header)].tolist() == first_header
    assert not mask[: len(first_header)].any()
    assert mask[len(first_header)]
    assert 0.8 < mask.mean() < 1.0


def test_training_lowers_the_loss_and_writes_peft_adapters(trained: ExperimentConfig) -> None:
    out = trained.train.out_dir
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 10, 20, 30]  # step 0: the base model, the fine-tune's reference
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    for tag in ("best", "last"):
        assert (out / "adapters" / tag / "adapter_config.json").is_file()
        assert (out / "adapters" / tag / "adapter_model.safetensors").is_file()
    assert (out / "tb").is_dir()
    manifest = json.loads(next((out / "checkpoints").glob("step_*/manifest.json")).read_text())
    assert manifest["model_config"]["kind"] == "lora"


# peft itself reads transformers 5's renamed `is_gradient_checkpointing` property; not this project's warning.
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_adapters_load_with_plain_peft_and_merged_logits_match(trained: ExperimentConfig, tiny_model: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = trained.train.out_dir / "adapters" / "best"
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    with_adapters = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(trained.train.out_dir / "merged")).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()
    ids = torch.from_numpy(np.asarray(open_dataset(trained.prepare.dataset_dir).val[:48], dtype=np.int64))[None]
    with torch.no_grad():
        adapted_logits = with_adapters(input_ids=ids).logits
        merged_logits = merged(input_ids=ids).logits
        plain_logits = plain(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, adapted_logits, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain_logits, adapted_logits, atol=1e-3)  # the adapters changed something


def test_sampling_from_adapters_and_from_merged(trained: ExperimentConfig) -> None:
    emitted: list[str] = []
    from_adapters = sample(trained, emit=emitted.append)
    assert from_adapters[0].text.startswith(trained.sample.prompt)
    assert from_adapters[0].path.is_file()
    merged = trained.model_copy(update={"sample": trained.sample.model_copy(update={"checkpoint": "merged"})})
    assert sample(merged, emit=emitted.append)[0].text.startswith(trained.sample.prompt)
    greedy = trained.sample.model_copy(update={"temperature": 0.0, "checkpoint": "best"})
    a = sample(trained.model_copy(update={"sample": greedy}), emit=emitted.append)[0].text
    b = sample(
        merged.model_copy(update={"sample": greedy.model_copy(update={"checkpoint": "merged"})}), emit=emitted.append
    )[0].text
    assert a == b  # base + adapters and the merged model generate the same greedy tokens
    chat = trained.model_copy(update={"sample": trained.sample.model_copy(update={"chat": True})})
    with pytest.raises(ConfigError, match=r"the model has no chat template; set sample\.chat = false"):
        sample(chat, emit=emitted.append)  # trained as plain text: no template it never saw


def test_eval_reports_the_masked_validation_loss(trained: ExperimentConfig) -> None:
    report = evaluate_checkpoint(trained)
    best = json.loads((trained.train.out_dir / "checkpoints" / "best.json").read_text())
    assert report.step == best["step"]
    assert report.val_loss == pytest.approx(best["val_loss"], rel=1e-4)
    dataset = open_dataset(trained.prepare.dataset_dir)
    assert dataset.val_mask is not None
    assert report.tokens == int(np.asarray(dataset.val_mask[1:]).sum())


def test_sampling_refuses_missing_adapters_and_adapters_of_another_base(
    trained: ExperimentConfig, tmp_path: Path, shared_data: Path
) -> None:
    empty_run = trained.train.model_copy(update={"out_dir": tmp_path / "empty"})
    with pytest.raises(CheckpointError, match="no LoRA adapters here"):
        sample(trained.model_copy(update={"train": empty_run}), emit=lambda _: None)
    other_base = build_tiny_causal_lm(
        tmp_path / "other", [(shared_data / "bundestag" / "19001.txt").read_text("utf-8-sig")]
    )
    wrong = trained.train.model_copy(
        update={"model": trained.train.model.model_copy(update={"base_model": str(other_base)})}
    )
    with pytest.raises(CheckpointError) as info:
        sample(trained.model_copy(update={"train": wrong}), emit=lambda _: None)
    message = str(info.value)
    assert str(other_base) in message
    assert str(trained.train.model.base_model) in message  # type: ignore[attr-defined]


def test_killed_lora_run_resumes_to_the_same_adapters(
    tmp_path: Path, tiny_model: Path, shared_data: Path, trained: ExperimentConfig
) -> None:
    settings = overrides(tmp_path, tiny_model, shared_data)
    prepare(load_config(experiment_config_path(EXPERIMENT), settings).prepare)
    killed = run_helper(settings, "after-step", 17)
    assert killed.returncode == -9, killed.stderr
    resumed = run_helper(settings, "none", 0)
    assert resumed.returncode == 0, resumed.stderr
    from safetensors.torch import load_file

    again = load_file(str(tmp_path / "run" / "adapters" / "last" / "adapter_model.safetensors"))
    baseline = load_file(str(trained.train.out_dir / "adapters" / "last" / "adapter_model.safetensors"))
    assert again.keys() == baseline.keys()
    for name in baseline:
        torch.testing.assert_close(again[name], baseline[name], rtol=0, atol=0)


def test_bad_base_model_and_target_modules(tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    settings = overrides(tmp_path, tiny_model, shared_data)
    config = load_config(experiment_config_path(EXPERIMENT), settings)
    prepare(config.prepare)
    lora = config.train.model.lora.model_copy(update={"target_modules": ["q_proj", "attn.c_attn"]})  # type: ignore[attr-defined]
    bad_targets = config.train.model_copy(update={"model": config.train.model.model_copy(update={"lora": lora})})
    with pytest.raises(ConfigError) as info:
        train(config.model_copy(update={"train": bad_targets}), quiet=True, console=Console(file=io.StringIO()))
    message = str(info.value)
    assert "train.model.lora.target_modules: attn.c_attn match no Linear module" in message
    for name in ("q_proj", "k_proj", "gate_proj", "down_proj"):
        assert name in message
    missing = config.train.model_copy(
        update={"model": config.train.model.model_copy(update={"base_model": "no-such-org/no-such-model"})}
    )
    with pytest.raises(ConfigError) as info:
        train(config.model_copy(update={"train": missing}), quiet=True, console=Console(file=io.StringIO()))
    message = str(info.value)
    assert "'no-such-org/no-such-model'" in message
    assert "Hugging Face cache" in message
    assert "set train.model.base_model to a local folder" in message
    assert "\n" not in message


def test_serve_chats_through_the_models_chat_template(chat_run: ExperimentConfig) -> None:
    import openai

    from ml_playground.core.sampling_rules import SamplingParams
    from ml_playground.sampling.runner import load_model, stream_decode
    from tests.chat_helpers import EXPERIMENT as CHAT_EXPERIMENT
    from tests.chat_helpers import settings as chat_settings
    from tests.serving_helpers import ServerProcess

    root = chat_run.train.out_dir.parent
    settings = chat_settings(root, Path(chat_run.train.model.base_model), root / "chat.jsonl")  # type: ignore[attr-defined]
    messages = [{"role": "user", "content": "Sehr geehrte Damen und Herren"}]
    threads = torch.get_num_threads()
    model = load_model(chat_run)  # train.num_threads=1, as in the server
    assert model.chat_ids is not None
    # top_p and repetition_penalty are left out of the requests: the server takes the experiment's [sample] ones
    sample = chat_run.sample
    params = SamplingParams(
        max_new_tokens=12,
        temperature=0.9,
        top_k=50,
        top_p=sample.top_p,
        repetition_penalty=sample.repetition_penalty,
        seed=5,
    )
    expected = stream_decode(model, model.chat_ids(messages), params, lambda _: None)
    torch.set_num_threads(threads)
    with (
        ServerProcess(CHAT_EXPERIMENT, settings) as server,
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0) as api,
    ):
        described = api.models.list().data[0].model_dump()
        same = {
            "model": CHAT_EXPERIMENT,
            "messages": messages,
            "max_tokens": 12,
            "temperature": 0.9,
            "seed": 5,
            "extra_body": {"top_k": 50},
        }
        answer = api.chat.completions.create(**same)  # type: ignore[call-overload]
        streamed = api.chat.completions.create(**same, stream=True)  # type: ignore[call-overload]
        pieces = [chunk.choices[0].delta for chunk in streamed if chunk.choices]
        scored = api.chat.completions.create(**same, logprobs=True, top_logprobs=3)  # type: ignore[call-overload]
    assert described["chat"] is True
    assert scored.choices[0].message.content == expected  # logprobs change nothing of the answer
    assert scored.choices[0].logprobs is not None
    content = scored.choices[0].logprobs.content or []
    assert "".join(entry.token for entry in content).startswith(expected)
    assert all(entry.logprob <= 0 and len(entry.top_logprobs) == 3 for entry in content)
    assert all(entry.top_logprobs[0].logprob >= entry.logprob - 1e-6 for entry in content)
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == expected
    assert pieces[0].role == "assistant"
    assert "".join(piece.content or "" for piece in pieces) == expected


def test_chat_keeps_a_chat_models_conversation_as_messages(chat_run: ExperimentConfig) -> None:
    from ml_playground.sampling.chat import Conversation, chat
    from ml_playground.sampling.runner import load_model

    model = load_model(chat_run)
    assert model.chat_ids is not None
    conversation = Conversation(model)
    first, keep = conversation.prompt_ids("Guten Tag")
    assert (first, keep) == (model.chat_ids([{"role": "user", "content": "Guten Tag"}]), 0)
    conversation.answered("Hallo")
    second, _ = conversation.prompt_ids("Und weiter?")
    assert second == model.chat_ids(
        [
            {"role": "user", "content": "Guten Tag"},
            {"role": "assistant", "content": "Hallo"},
            {"role": "user", "content": "Und weiter?"},
        ]
    )
    conversation.reset()
    assert conversation.prompt_ids("Guten Tag")[0] == first

    typed = iter(["Guten Tag", "/reset", "", "Und weiter?", "/quit"])
    said: list[str] = []
    assert chat(chat_run, read_line=lambda _: next(typed), emit=said.append) == 2
    assert re.search(r"\(step \d+, chat template\)", said[0])
    assert "(conversation forgotten)\n" in said


def test_export_merges_the_adapters_into_gguf_and_a_modelfile_that_stops_where_training_did(
    trained: ExperimentConfig, tmp_path: Path
) -> None:
    from llama_cpp import Llama

    from ml_playground.commands.export import run_export
    from ml_playground.export.request import ExportRequest
    from ml_playground.families.hf_lora.export import check_consistency
    from ml_playground.sampling.runner import load_model

    out = tmp_path / "ollama"
    request = ExportRequest(format="ollama", out_dir=out, checkpoint="best", name="tiny", gguf_type="f32")
    result = run_export(trained, request, which=lambda _: None)
    assert result.files == ["Modelfile", "tiny-f32.gguf"]
    assert result.step == 30
    text = (out / "Modelfile").read_text("utf-8")
    assert 'TEMPLATE """{{ .Prompt }}"""' in text  # trained as plain text: a completion model, no chat template
    assert 'PARAMETER stop "<|endoftext|>"' in text
    assert "<|im_end|>" not in text
    model = load_model(trained)  # base + best adapters, as sample and serve load it
    ids = model.tokenizer.encode("Sehr geehrte Damen und Herren")
    llm = Llama(model_path=str(out / "tiny-f32.gguf"), n_ctx=128, verbose=False)
    assert llm.tokenize(b"Sehr geehrte Damen und Herren", add_bos=False, special=False) == ids
    greedy = []
    for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        greedy.append(token)
        if len(greedy) == 32:
            break
    with torch.no_grad():
        expected = model.module(torch.tensor([ids + greedy[:-1]]))[0].argmax(-1)[len(ids) - 1 :].tolist()
    assert greedy == expected  # llama.cpp's merged model picks what base + adapters pick

    no_dataset = trained.model_copy(
        update={"prepare": trained.prepare.model_copy(update={"dataset_dir": tmp_path / "elsewhere"})}
    )  # a run whose dataset is gone exports all the same: there is nothing to compare the end token with
    hf = run_export(no_dataset, ExportRequest(format="hf", out_dir=tmp_path / "hf", checkpoint="merged"))
    assert "model.safetensors" in hf.files
    with pytest.raises(UserError, match="exists and is not empty; use --force"):
        run_export(trained, ExportRequest(format="hf", out_dir=tmp_path / "hf", checkpoint="best"))

    def disk_full(folder: Path) -> None:
        raise OSError(28, "No space left on device")

    forced = ExportRequest(format="ollama", out_dir=out, checkpoint="best", name="tiny", gguf_type="f32", force=True)
    with pytest.raises(UserError, match=r"export failed, nothing written \(No space left on device\)"):
        run_export(trained, forced, which=lambda _: None, write_hook=disk_full)
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "tiny-f32.gguf"]  # the old export is intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    tokenizer = model.tokenizer.tokenizer
    gguf = out / "tiny-f32.gguf"
    check_consistency(tokenizer, tokenizer.eos_token_id, gguf, text)  # what export itself checked
    assert tokenizer.chat_template is None
    tokenizer.chat_template = "{{ messages[0]['content'] }}"
    with pytest.raises(UserError, match="the GGUF file's chat template differs from the tokenizer's"):
        check_consistency(tokenizer, None, gguf, None)
    tokenizer.chat_template = None
    tokenizer.eos_token = "<|im_end|>"
    with pytest.raises(UserError, match="the GGUF file's end-of-sequence id is"):
        check_consistency(tokenizer, None, gguf, None)
    tokenizer.eos_token = "<|endoftext|>"
    stripped = text.replace('PARAMETER stop "<|endoftext|>"\n', "")
    with pytest.raises(UserError, match=re.escape("the Modelfile does not stop at <|endoftext|>")):
        check_consistency(model.tokenizer.tokenizer, None, None, stripped)
    with pytest.raises(UserError, match="the training data ends records with token 3"):
        check_consistency(model.tokenizer.tokenizer, 3, None, None)
