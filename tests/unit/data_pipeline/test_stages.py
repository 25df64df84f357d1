"""``prepare`` as one pipeline: the stages are chosen once from the config, recorded in ``meta.json``, and
the files each stage writes are what a prepared dataset must still have."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml_playground.configuration.models import FiltersConfig, PrepareConfig
from ml_playground.core.errors import DataError
from ml_playground.core.tokenizer import PretrainedTokenizer
from ml_playground.data_pipeline.corpus import corpus_text
from ml_playground.data_pipeline.meta import read_meta
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.data_pipeline.stages import choose_stages
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    text = (shared_data / "shakespeare" / "input.txt").read_text("utf-8")[:20000]
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny"), [text], vocab_size=300)


@pytest.mark.parametrize(
    ("settings", "stages"),
    [
        ({"format": "text"}, ("text", "own", "stream")),
        ({"format": "text", "tokenizer": "hf"}, ("text", "pretrained", "stream")),
        ({"format": "bundestag"}, ("protocols", "own", "stream")),
        ({"format": "bundestag_xml", "tokenizer": "hf"}, ("protocols", "pretrained", "records")),
        ({"format": "bundestag", "tokenizer": "bpe", "conditioning": "header"}, ("records", "header", "records")),
        (
            {"format": "bundestag_xml", "tokenizer": "hf", "conditioning": "header"},
            ("records", "pretrained", "records"),
        ),
        ({"format": "jsonl"}, ("records", "own", "stream")),
        ({"format": "speakger", "tokenizer": "hf"}, ("records", "pretrained", "records")),
        ({"format": "chat", "tokenizer": "hf"}, ("conversations", "chat", "records")),
        ({"format": "bundestag_qa", "tokenizer": "hf"}, ("conversations", "chat", "records")),
    ],
)
def test_format_tokenizer_and_conditioning_choose_the_stages_once(
    tmp_path: Path, settings: dict[str, str], stages: tuple[str, str, str]
) -> None:
    config = PrepareConfig(input_path="x", dataset_dir=tmp_path, hf_tokenizer="unused", **settings)  # type: ignore[arg-type]
    chosen = choose_stages(config)
    assert (chosen.source, chosen.encoder, chosen.layout) == stages
    assert chosen.describe().startswith("stages: ")


def test_plain_text_with_a_pretrained_tokenizer_is_one_stream_of_its_ids(
    tmp_path: Path, shakespeare_slice: Path, tiny_tokenizer: Path
) -> None:
    config = PrepareConfig(
        input_path=str(shakespeare_slice), dataset_dir=tmp_path / "ds", tokenizer="hf", hf_tokenizer=str(tiny_tokenizer)
    )
    report = prepare(config)
    text = shakespeare_slice.read_text("utf-8")
    split = int(len(text) * (1 - config.val_fraction))
    tokenizer = PretrainedTokenizer.from_pretrained(str(tiny_tokenizer), key="k", cache_dir=tmp_path)
    train = np.fromfile(config.dataset_dir / "train.bin", dtype=np.uint16)
    assert train.tolist() == tokenizer.encode(text[:split])
    assert read_meta(config.dataset_dir)["stages"] == {"source": "text", "encoder": "pretrained", "layout": "stream"}
    assert "stages: plain text -> the pretrained tokenizer -> one token stream" in report.summary()


def test_a_prepared_dataset_is_up_to_date_only_while_every_file_its_stages_wrote_is_there(
    tmp_path: Path, shared_data: Path
) -> None:
    """Protocols with a conditioning header write records, not a speeches table: preparing again is a no-op."""
    config = PrepareConfig(
        input_path=str(shared_data / "bundestag" / "19009.txt"),
        dataset_dir=tmp_path / "ds",
        format="bundestag",
        tokenizer="bpe",
        bpe_vocab_size=300,
        conditioning="header",
    )
    assert not prepare(config).skipped
    assert read_meta(config.dataset_dir)["files"] == ["records.jsonl", "conditions.json", "corpus.txt"]
    assert prepare(config).skipped
    (config.dataset_dir / "conditions.json").unlink()
    assert not prepare(config).skipped
    assert (config.dataset_dir / "conditions.json").is_file()


def test_the_source_stage_renders_headers_as_drawn_into_the_corpus(tmp_path: Path) -> None:
    source = tmp_path / "speeches.jsonl"
    rows = [{"speaker": f"S{i}", "party": "SPD", "text": f"Rede Nummer {i} über die Rente."} for i in range(40)]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), "utf-8")
    config = PrepareConfig(
        input_path=str(source),
        dataset_dir=tmp_path / "ds",
        format="jsonl",
        tokenizer="bpe",
        bpe_vocab_size=300,
        conditioning="header",
        speaker_dropout=0.5,
    )
    prepare(config)
    corpus = (config.dataset_dir / "corpus.txt").read_text("utf-8")
    assert corpus_text(config) == corpus
    assert 5 < corpus.count("<|speaker|>") < 35


def test_too_few_records_to_split_is_one_error(tmp_path: Path) -> None:
    source = tmp_path / "one.jsonl"
    source.write_text('{"text": "Nur eine Rede."}\n', "utf-8")
    config = PrepareConfig(input_path=str(source), dataset_dir=tmp_path / "ds", format="jsonl", tokenizer="hf")
    config = config.model_copy(update={"hf_tokenizer": "unused"})
    with pytest.raises(DataError, match=r"prepare\.input_path: 1 record\(s\) are too few"):
        prepare(config)
    assert not (tmp_path / "ds" / "meta.json").exists()


def test_protocols_filtered_to_nothing_name_the_filters_and_leave_no_folder(tmp_path: Path, xml_archive: Path) -> None:
    config = PrepareConfig(
        input_path=str(xml_archive),
        dataset_dir=tmp_path / "ds",
        format="bundestag_xml",
        filters=FiltersConfig(parties=["Piraten"]),
    )
    with pytest.raises(DataError, match=r"prepare\.filters: no speeches left after filtering"):
        prepare(config)
    assert not (tmp_path / "ds").exists()
