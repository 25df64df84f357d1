"""prepare for the chat formats: question time from two real XML sessions, and the refusals that keep
nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ml_playground.configuration.models import PrepareConfig
from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.batches import open_dataset
from ml_playground.data_pipeline.chat_corpus import VAL_CONVERSATIONS
from ml_playground.data_pipeline.preparer import prepare
from ml_playground.families.hf_lora.tiny import CHAT_TEMPLATE, EOS, IM_END, IM_START


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A tokenizer trained on real protocol text, with ChatML's tokens and template, saved as a folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = (shared_data / "bundestag" / "19009.txt").read_text("utf-8-sig")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, special_tokens=[EOS, IM_START, IM_END], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([text], trainer)
    built: Any = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=IM_END)  # type: ignore[no-untyped-call]
    built.chat_template = CHAT_TEMPLATE
    folder = tmp_path_factory.mktemp("tokenizer")
    built.save_pretrained(str(folder))
    return folder


def config(tmp_path: Path, tokenizer_dir: Path, **settings: Any) -> PrepareConfig:
    values: dict[str, Any] = {
        "dataset_dir": tmp_path / "dataset",
        "tokenizer": "hf",
        "hf_tokenizer": str(tokenizer_dir),
        "val_fraction": 0.25,
        "chat_max_tokens": 2048,
        **settings,
    }
    return PrepareConfig(**values)


def test_question_time_from_real_protocols(tmp_path: Path, tokenizer_dir: Path, xml_archive: Path) -> None:
    report = prepare(config(tmp_path, tokenizer_dir, input_path=str(xml_archive), format="bundestag_qa"))
    summary = report.summary()
    assert "question/answer pairs: 8 (question time 0, interposed questions 8)" in summary
    assert "conversations: 6 train, 2 validation; 0 cut" in summary
    dataset = open_dataset(tmp_path / "dataset")
    assert dataset.whole_records
    assert dataset.meta["chat"]["end_of_turn"] == [IM_END]
    asked = [json.loads(line) for line in (tmp_path / "dataset" / VAL_CONVERSATIONS).read_text("utf-8").splitlines()]
    assert [m["role"] for m in asked[0]["messages"]] == ["system", "user", "assistant"]
    assert asked[0]["messages"][0]["content"].startswith("Plenarsitzung des Deutschen Bundestages. Es antwortet ")
    again = prepare(config(tmp_path, tokenizer_dir, input_path=str(xml_archive), format="bundestag_qa"))
    assert again.skipped


def test_conversations_that_do_not_fit_are_refused_and_nothing_is_written(
    tmp_path: Path, tokenizer_dir: Path, xml_sessions: dict[str, bytes]
) -> None:
    data = tmp_path / "chat.jsonl"
    short = {"prompt": "Wann?", "completion": "Morgen."}
    long = {"prompt": "Wann kommt das Gesetz über die Krankenhäuser? " * 20, "completion": "Im Herbst."}
    data.write_text("\n".join(json.dumps(c) for c in [short] * 6 + [long] * 2) + "\n", "utf-8")
    chat = {"input_path": str(data), "format": "chat"}
    with pytest.raises(DataError, match="no validation conversation fits in 40 tokens"):
        prepare(config(tmp_path, tokenizer_dir, **chat, chat_max_tokens=40))
    with pytest.raises(DataError, match="no conversation fits in 5 tokens"):
        prepare(config(tmp_path, tokenizer_dir, **chat, chat_max_tokens=5))
    session = tmp_path / "19009-data.xml"  # a session without question time or interposed questions
    session.write_bytes(xml_sessions["19009"])
    with pytest.raises(DataError, match="no conversations in the input"):
        prepare(config(tmp_path, tokenizer_dir, input_path=str(session), format="bundestag_qa"))
    assert not (tmp_path / "dataset").exists()


def test_a_malformed_session_is_counted_or_refused(tmp_path: Path, tokenizer_dir: Path, xml_archive: Path) -> None:
    import io
    import shutil
    import tarfile

    archive = tmp_path / "wp19-broken.tar.gz"
    shutil.copy(xml_archive, tmp_path / "good.tar.gz")
    with tarfile.open(tmp_path / "good.tar.gz") as good, tarfile.open(archive, "w:gz") as broken:
        for member in good.getmembers():
            handle = good.extractfile(member)
            assert handle is not None
            broken.addfile(member, io.BytesIO(handle.read()))
        bad = b"<dbtplenarprotokoll><unclosed>"
        info = tarfile.TarInfo("wp19/19999-data.xml")
        info.size = len(bad)
        broken.addfile(info, io.BytesIO(bad))
    (tmp_path / "good.tar.gz").unlink()
    report = prepare(config(tmp_path, tokenizer_dir, input_path=str(archive), format="bundestag_qa"))
    assert any("1 malformed file(s) or row(s) skipped" in warning for warning in report.warnings)
    with pytest.raises(DataError, match="not well-formed XML"):
        prepare(
            config(
                tmp_path, tokenizer_dir, input_path=str(archive), format="bundestag_qa", malformed="error",
                dataset_dir=tmp_path / "strict",
            )
        )  # fmt: skip
