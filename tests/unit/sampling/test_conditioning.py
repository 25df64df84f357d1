from __future__ import annotations

import pytest

from ml_playground.core.tokenizer import CharTokenizer
from ml_playground.data_pipeline.header import format_header
from ml_playground.sampling.conditioning import party_contrast

pytestmark = pytest.mark.unit

PARTIES = ["SPD", "FDP", "AfD"]


def test_party_contrast_is_the_prompt_under_every_party_with_its_header_length() -> None:
    fields = {"speaker": None, "party": "FDP", "year": 2019, "topic": None}
    text = "Meine Damen"
    tokenizer = CharTokenizer.train("".join(format_header({**fields, "party": p}) for p in PARTIES) + text)
    prompts = party_contrast(tokenizer, fields, PARTIES, text)
    assert [tokenizer.decode(list(p.ids)) for p in prompts] == [
        format_header({**fields, "party": party}) + text for party in PARTIES
    ]
    assert [p.keep_prefix for p in prompts] == [len(format_header({**fields, "party": p})) for p in PARTIES]


def test_no_contrast_without_a_party_or_an_alternative() -> None:
    tokenizer = CharTokenizer.train(format_header({"party": "SPD", "year": 2019}))
    assert party_contrast(tokenizer, {"party": None, "year": 2019}, PARTIES) == ()
    assert party_contrast(tokenizer, {"party": "SPD", "year": 2019}, ["SPD"]) == ()
