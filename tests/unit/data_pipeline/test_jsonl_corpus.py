from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.errors import ConfigError, DataError
from ml_playground.data_pipeline.preparer import prepare

pytestmark = pytest.mark.unit


def config(tmp_path: Path, source: Path, **extra: object) -> PrepareConfig:
    return PrepareConfig(input_path=str(source), dataset_dir=tmp_path / "ds", format="jsonl", **extra)  # type: ignore[arg-type]


def test_jsonl_records_become_the_corpus(tmp_path: Path) -> None:
    source = tmp_path / "speeches.jsonl"
    lines = [{"speaker": "A", "text": f"Rede Nummer {i}."} for i in range(30)]
    lines.append({"text": "(Beifall)", "kind": "interjection"})
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    report = prepare(config(tmp_path, source))
    assert "speeches: 30 kept of 30 read" in report.summary()
    corpus = (tmp_path / "ds" / "corpus.txt").read_text("utf-8")
    assert corpus.startswith("Rede Nummer 0.\n\nRede Nummer 1.")
    assert "Beifall" not in corpus


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\nnot json\n', "line 2 is not JSON"),
        ('{"speaker": "A"}\n', "line 1 has no 'text' string"),
        ('["a list"]\n', "line 1 has no 'text' string"),
        ('{"text": "x", "kind": "interjection"}\n', "no records with text"),
    ],
)
def test_bad_jsonl_is_named(tmp_path: Path, content: str, message: str) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text(content)
    with pytest.raises(DataError, match=message):
        prepare(config(tmp_path, source))


def test_a_template_needs_a_tokenizer_with_eos(tmp_path: Path) -> None:
    source = tmp_path / "s.jsonl"
    source.write_text('{"text": "Hallo Welt."}\n' * 20)
    with pytest.raises(ConfigError, match="a template needs tokenizer = 'hf'"):
        prepare(config(tmp_path, source, template="{speaker}:\n"))
