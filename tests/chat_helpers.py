"""A chat fine-tune for the tests: chat JSONL from real protocol text, a tiny local Qwen2, a template of ours."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from rich.console import Console

from ml_playground.commands.train import train
from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import ExperimentConfig
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm
from tests.lora_helpers import run_paths

EXPERIMENT = "bundestag_qa_smollm2"
OUR_TEMPLATE = (  # ChatML with a default system prompt the base's own template does not have
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nAntworte kurz.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def conversations(text: str) -> list[dict[str, Any]]:
    """Real protocol text as questions and answers: a paragraph's first sentence asks, the next paragraph answers;
    every third conversation has a second exchange."""
    paragraphs = [p.strip() for p in text.split("\n") if len(p.strip()) > 80]
    found: list[dict[str, Any]] = []
    for i in range(0, min(len(paragraphs) - 3, 240), 4):
        ask = re.split(r"(?<=[.!?])\s", paragraphs[i])[0][:120]
        messages = [{"role": "user", "content": ask + "?"}, {"role": "assistant", "content": paragraphs[i + 1][:160]}]
        if i % 12 == 0:
            messages += [
                {"role": "user", "content": paragraphs[i + 2][:80] + "?"},
                {"role": "assistant", "content": paragraphs[i + 3][:120]},
            ]
        found.append({"messages": messages})
    return found


def settings(root: Path, base: Path, data: Path, run: str = "run") -> list[str]:
    return [
        *run_paths(root, base, data, run),
        "prepare.format='chat'",
        f"prepare.chat_template={json.dumps(OUR_TEMPLATE)}",
        "prepare.val_fraction=0.1",
        "train.num_threads=1",
        "train.model.block_size=192",
        "train.model.compile=false",  # tiny models train eager here; compiled layers have tests of their own
        "train.max_iters=6",
        "train.eval_interval=3",
        "train.eval_max_tokens=512",
        "train.checkpoint.interval=3",
        "train.model.save_merged_on_best=false",
        "sample.max_new_tokens=8",
    ]


def train_chat_run(root: Path, shared_data: Path) -> ExperimentConfig:
    """A tiny Qwen2 LoRA-tuned on chat JSONL made of real protocol text, with ``OUR_TEMPLATE``."""
    text = (shared_data / "bundestag" / "19009.txt").read_text("utf-8-sig")
    base = build_tiny_causal_lm(root / "qwen2", [text])
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations(text)), "utf-8")
    config = load_config(experiment_config_path("bundestag_qa_smollm2"), settings(root, base, data))
    prepare(config.prepare)
    train(config, console=Console(file=io.StringIO()), install_signal_handlers=False)
    return config
