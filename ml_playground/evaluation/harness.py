"""Two tasks of ours for lm-evaluation-harness, written as its task YAML over local files, and runs of it.

- ``protocol_bpb``: ``loglikelihood_rolling`` over held-out text (one document: the text ``eval --data``
  reads). Its ``bits_per_byte`` through a served model must equal ``eval --data``'s on the same
  checkpoint: the server scores echoed prompts in the windows ``eval`` uses, and ``eval --data``
  scores the text after the end-of-text token, which is the harness's prefix token.
- ``protocol_next``: multiple choice. Which of two sentences is the real next sentence of the text (the
  other one comes from elsewhere in it)? Accuracy, through the server and through the harness's own
  ``hf`` model on our Hugging Face export: the same model, so the same accuracy.

The harness (PyPI ``lm-eval``, dependency group ``harness``) talks to the server as its
``local-completions`` model: ``echo`` + ``logprobs`` on ``/v1/completions``, our ``/tokenize`` as its
tokenizer. Its ``max_length`` counts the one token it asks to be generated and the one token of
context a rolling window carries: ``served_model_args`` sets it to the context + 2, so each window
scores exactly a context's worth of targets, as ``eval`` does.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ml_playground.core.atomic import atomic_write_text
from ml_playground.core.errors import UserError

BPB_TASK = "protocol_bpb"
NEXT_TASK = "protocol_next"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-ZÄÖÜ])")
SENTENCE_CHARS = (40, 300)  # sentences shorter or longer make poor choices
NEIGHBOURS = 5  # a distractor is never this close to the real next sentence


@dataclass(frozen=True)
class HarnessReport:
    """Our ``eval --data`` beside the harness through the server and through the ``hf`` model."""

    eval_bits_per_byte: float
    served_bits_per_byte: float
    served_accuracy: float
    hf_accuracy: float | None
    items: int
    tokens: int  # the targets eval --data scored
    context_length: int  # the windows they were scored in
    tasks: str  # the folder holding the task YAML and data

    @property
    def relative_difference(self) -> float:
        return abs(self.served_bits_per_byte - self.eval_bits_per_byte) / self.eval_bits_per_byte

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "relative_difference": self.relative_difference}


def sentences(text: str) -> list[str]:
    """The text's sentences, one line's whitespace folded."""
    return [" ".join(part.split()) for part in SENTENCE_END.split(text) if part.strip()]


def next_sentence_items(text: str, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``count`` items: a sentence, its real successor and a sentence from elsewhere, in a seeded order."""
    found = sentences(text)
    low, high = SENTENCE_CHARS
    fits = [i for i, s in enumerate(found) if low <= len(s) <= high]
    usable = set(fits)
    pairs = [i for i in fits if i + 1 in usable]
    rng = random.Random(seed)
    picked = sorted(rng.sample(pairs, min(count, len(pairs))))
    items = []
    for i in picked:
        others = [j for j in fits if abs(j - (i + 1)) > NEIGHBOURS and found[j] != found[i + 1]]
        if not others:
            continue
        label = rng.randrange(2)
        choices = [found[i + 1], found[rng.choice(others)]]
        if label == 1:
            choices.reverse()
        items.append({"context": found[i], "choices": choices, "label": label})
    return items


def _task_yaml(name: str, data: Path, body: str) -> str:
    """A task over one local JSON-lines file (the ``json`` builder of ``datasets``: nothing from the Hub).
    Strings are written as JSON, which YAML reads as they are."""
    return (
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {json.dumps(str(data.resolve()))}\n"
        "test_split: test\n"
        f"{body}"
    )


def write_tasks(text: str, folder: Path, items: int, seed: int = 0) -> int:
    """Both tasks' YAML and data in ``folder`` (atomic writes); returns how many choice items were made."""
    if not text.strip():
        raise UserError("there is no text to build the harness tasks from")
    made = next_sentence_items(text, items, seed)
    if not made:
        raise UserError(
            f"the text has no two successive sentences of {SENTENCE_CHARS[0]}-{SENTENCE_CHARS[1]} characters "
            "to build the next-sentence task from; give more text"
        )
    folder.mkdir(parents=True, exist_ok=True)
    bpb_data, next_data = folder / f"{BPB_TASK}.jsonl", folder / f"{NEXT_TASK}.jsonl"
    atomic_write_text(bpb_data, json.dumps({"text": text}, ensure_ascii=False) + "\n")
    atomic_write_text(next_data, "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in made))
    rolling = (
        "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\n'
        'doc_to_target: "{{text}}"\n'
        "metric_list:\n"
        "  - metric: bits_per_byte\n"
        "    aggregation: bits_per_byte\n"
        "    higher_is_better: false\n"
    )
    choice = (
        "output_type: multiple_choice\n"
        "doc_to_text: context\n"
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
    )
    atomic_write_text(folder / f"{BPB_TASK}.yaml", _task_yaml(BPB_TASK, bpb_data, rolling))
    atomic_write_text(folder / f"{NEXT_TASK}.yaml", _task_yaml(NEXT_TASK, next_data, choice))
    return len(made)


def served_model_args(completions_url: str, model: str, context_length: int) -> dict[str, Any]:
    """``local-completions`` against our server: the server's own tokenizer; windows of the whole context."""
    return {
        "base_url": completions_url,
        "model": model,
        "tokenizer_backend": "remote",
        "tokenized_requests": True,
        "max_length": context_length + 2,
        "num_concurrent": 1,
        "max_retries": 1,
    }


def hf_model_args(folder: Path) -> dict[str, Any]:
    """The harness's own ``hf`` model on a Hugging Face folder, in float32 on the CPU."""
    return {"pretrained": str(folder), "device": "cpu", "dtype": "float32"}


def run_tasks(
    model: str, model_args: Mapping[str, Any], tasks: Sequence[str], folder: Path
) -> dict[str, dict[str, float]]:
    """``lm_eval.simple_evaluate`` on our tasks in ``folder``: each task's metrics (``bits_per_byte``, ``acc``)."""
    try:
        from lm_eval import evaluator
        from lm_eval.tasks import TaskManager
    except ImportError:  # pragma: no cover (make setup installs it; the tests run the real harness)
        raise UserError("lm-evaluation-harness is not installed; `make setup` installs it (group harness)") from None
    out: Any = evaluator.simple_evaluate(
        model=model,
        model_args=dict(model_args),
        tasks=list(tasks),
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
        batch_size=1,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    if out is None:  # pragma: no cover (only on a distributed rank other than 0)
        raise UserError("lm-evaluation-harness returned no results")
    return {
        task: {metric.partition(",")[0]: float(value) for metric, value in found.items() if _is_number(value)}
        for task, found in out["results"].items()
    }


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
