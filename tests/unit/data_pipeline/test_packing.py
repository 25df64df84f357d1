"""Records with a pretrained-style tokenizer: header (template) + text + EOS, written by the records layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml_playground.core.errors import ConfigError
from ml_playground.core.tokenizer import CharTokenizer
from ml_playground.data_pipeline.encoders import PretrainedRecords
from ml_playground.data_pipeline.layouts import write_records
from ml_playground.data_pipeline.packing import check_template, render_header

pytestmark = pytest.mark.unit

RECORDS = [
    {"speaker": "Jürgen Hardt", "party": "CDU/CSU", "text": "Danke."},
    {"speaker": "Dr. Frauke Petry", "party": None, "text": "Ja."},
]
TOKENIZER = CharTokenizer(sorted(set("".join(r["text"] for r in RECORDS) + "Jürgen Hardt (CDU/CSU):\nDr.FaukePy()#")))
EOS = TOKENIZER.vocab_size  # an id past the characters, as a real tokenizer's special token would be


def encoder(template: str | None, *, mask_header: bool) -> PretrainedRecords:
    header = (lambda record: render_header(template, record)) if template else (lambda _record: "")
    return PretrainedRecords(TOKENIZER, EOS, header, mask_header=mask_header)


def test_each_record_is_header_text_eos_and_eos_is_always_a_target() -> None:
    first, second = encoder("{speaker} ({party}):\n", mask_header=True).encode(list(enumerate(RECORDS)))
    assert first is not None
    assert second is not None
    header = TOKENIZER.encode("Jürgen Hardt (CDU/CSU):\n")
    body = TOKENIZER.encode("Danke.")
    assert list(first.ids) == [*header, *body, EOS]
    assert first.mask.tolist() == [0] * len(header) + [1] * (len(body) + 1)
    assert first.header == len(header)
    assert list(second.ids)[: second.header] == TOKENIZER.encode("Dr. Frauke Petry ():\n")
    assert second.mask[-1] == 1
    assert list(second.ids)[-1] == EOS


def test_the_records_layout_writes_tokens_masks_and_index_per_split(tmp_path: Path) -> None:
    """The last record is validation; each split's index rows count from its own first token."""
    written = write_records(
        tmp_path, iter(RECORDS), 2, 1, encoder("{speaker}:\n", mask_header=False), input_path=tmp_path / "in"
    )
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    val_index = np.fromfile(tmp_path / "val_index.bin", dtype=np.int64).reshape(-1, 3)
    header = len("Dr. Frauke Petry:\n")
    assert train.tolist() == [*TOKENIZER.encode("Jürgen Hardt:\nDanke."), EOS]
    assert np.fromfile(tmp_path / "train_mask.bin", dtype=np.uint8).all()
    assert val_index.tolist() == [[0, header, header + len("Ja.") + 1]]
    assert (written.train_tokens, written.val_tokens) == (len(train), header + len("Ja.") + 1)
    bare = encoder(None, mask_header=False).encode(list(enumerate(RECORDS)))
    assert [list(e.ids) for e in bare if e] == [[*TOKENIZER.encode("Danke."), EOS], [*TOKENIZER.encode("Ja."), EOS]]


def test_template_problems_are_config_errors() -> None:
    check_template("{speaker} ({party}):\n", ["speaker", "party", "text"])
    with pytest.raises(ConfigError, match=r"prepare\.template: unknown field.*topic; records have party, speaker"):
        check_template("{speaker} {topic}", ["speaker", "party"])
    with pytest.raises(ConfigError, match="not a valid template"):
        check_template("{speaker", ["speaker"])
    assert render_header("#{party}#", {"party": None}) == "##"
