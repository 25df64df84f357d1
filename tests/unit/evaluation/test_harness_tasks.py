"""The harness's two task files: next-sentence items from text, the YAML the real lm-eval reads, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_playground.core.errors import UserError
from ml_playground.evaluation.harness import (
    BPB_TASK,
    NEIGHBOURS,
    NEXT_TASK,
    next_sentence_items,
    sentences,
    write_tasks,
)

pytestmark = pytest.mark.unit

TEXT = " ".join(
    f"Satz Nummer {i} handelt von der Frage, wie der Haushalt des Jahres {2000 + i} beraten wurde." for i in range(40)
)


def test_items_pair_a_sentence_with_its_successor_and_a_distant_one() -> None:
    found = sentences(TEXT)
    items = next_sentence_items(TEXT, 12, seed=3)
    assert len(items) == 12
    assert {item["label"] for item in items} == {0, 1}  # the real one is not always first
    for item in items:
        position = found.index(item["context"])
        real = item["choices"][item["label"]]
        other = item["choices"][1 - item["label"]]
        assert real == found[position + 1]
        assert abs(found.index(other) - (position + 1)) > NEIGHBOURS
    assert next_sentence_items(TEXT, 12, seed=3) == items  # seeded


def test_task_files_are_what_lm_eval_reads(tmp_path: Path) -> None:
    from lm_eval.tasks import TaskManager

    assert write_tasks(TEXT, tmp_path, 5) == 5
    [doc] = [json.loads(line) for line in (tmp_path / f"{BPB_TASK}.jsonl").read_text("utf-8").splitlines()]
    assert doc == {"text": TEXT}
    assert len((tmp_path / f"{NEXT_TASK}.jsonl").read_text("utf-8").splitlines()) == 5
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    assert {BPB_TASK, NEXT_TASK} <= set(manager.all_tasks)
    tasks = manager.load([BPB_TASK, NEXT_TASK])["tasks"]
    assert {name: task.config.output_type for name, task in tasks.items()} == {
        BPB_TASK: "loglikelihood_rolling",
        NEXT_TASK: "multiple_choice",
    }


@pytest.mark.parametrize(
    ("text", "message"), [("   ", "no text"), ("Kurz. Zu kurz. Viel zu kurz.", "two successive sentences")]
)
def test_too_little_text_is_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        write_tasks(text, tmp_path / "tasks", 5)
    assert not (tmp_path / "tasks").exists()
