from __future__ import annotations

import pytest

from ml_playground.core.errors import ConfigError, DataError
from ml_playground.core.tokenizer import CharTokenizer
from ml_playground.data_pipeline.packing import check_template, pack_records, render_header, template_header

pytestmark = pytest.mark.unit

RECORDS = [
    {"speaker": "Jürgen Hardt", "party": "CDU/CSU", "text": "Danke."},
    {"speaker": "Dr. Frauke Petry", "party": None, "text": "Ja."},
]
TOKENIZER = CharTokenizer(sorted(set("".join(r["text"] for r in RECORDS) + "Jürgen Hardt (CDU/CSU):\nDr.FaukePy()#")))
EOS = TOKENIZER.vocab_size  # an id past the characters, as a real tokenizer's special token would be


def test_each_record_is_header_text_eos_and_eos_is_always_a_target() -> None:
    packed = pack_records(RECORDS, TOKENIZER, EOS, header=template_header("{speaker} ({party}):\n"), mask_header=True)
    header = TOKENIZER.encode("Jürgen Hardt (CDU/CSU):\n")
    body = TOKENIZER.encode("Danke.")
    first = len(header) + len(body) + 1
    assert packed.ids[:first].tolist() == [*header, *body, EOS]
    assert packed.mask[:first].tolist() == [0] * len(header) + [1] * (len(body) + 1)
    assert packed.ids[first : first + len("Dr. Frauke Petry ():\n")].tolist() == TOKENIZER.encode(
        "Dr. Frauke Petry ():\n"
    )
    assert packed.mask[packed.ids == EOS].all()
    assert (packed.ids == EOS).sum() == 2
    second = len("Dr. Frauke Petry ():\n")
    assert packed.index.tolist() == [[0, len(header), first], [first, second, second + len("Ja.") + 1]]


def test_unmasked_headers_and_no_template() -> None:
    packed = pack_records(RECORDS, TOKENIZER, EOS, header=template_header("{speaker}:\n"), mask_header=False)
    assert packed.mask.all()
    bare = pack_records(RECORDS, TOKENIZER, EOS)
    assert bare.ids.tolist() == [*TOKENIZER.encode("Danke."), EOS, *TOKENIZER.encode("Ja."), EOS]


def test_template_problems_are_config_errors() -> None:
    check_template("{speaker} ({party}):\n", ["speaker", "party", "text"])
    with pytest.raises(ConfigError, match=r"prepare\.template: unknown field.*topic; records have party, speaker"):
        check_template("{speaker} {topic}", ["speaker", "party"])
    with pytest.raises(ConfigError, match="not a valid template"):
        check_template("{speaker", ["speaker"])
    assert render_header("#{party}#", {"party": None}) == "##"
    with pytest.raises(DataError, match="no records"):
        pack_records([], TOKENIZER, EOS)
