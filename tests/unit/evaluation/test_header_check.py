from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from ml_playground.core.tokenizer import CharTokenizer
from ml_playground.data_pipeline.header import format_header
from ml_playground.data_pipeline.sources.records import SpeechRecord
from ml_playground.evaluation.header_check import check_header, header_scores
from ml_playground.families.gpt.model import GPT, GPTConfig

pytestmark = pytest.mark.unit

PARTIES = ["A", "B", "C"]
LETTERS = {"A": "ab", "B": "cd", "C": "ef"}  # what each party says: the header alone tells which pair


def speech(party: str, rng: random.Random, length: int = 24) -> SpeechRecord:
    return SpeechRecord(text="".join(rng.choice(LETTERS[party]) for _ in range(length)), party=party, year=2019)


def tokenizer() -> CharTokenizer:
    headers = "".join(format_header({"party": p, "year": 2019}) for p in PARTIES)
    return CharTokenizer(sorted(set(headers + "".join(LETTERS.values()))))


def tiny_gpt(vocab_size: int) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, rotary=True)
    return GPT(config)


def test_scores_in_one_padded_pass_equal_each_header_scored_alone() -> None:
    tok = tokenizer()
    model = tiny_gpt(tok.vocab_size).eval()
    prompts = [tok.encode(format_header({"party": p, "year": 2019})) for p in PARTIES]
    prompts[1] = prompts[1][:-3]  # rows of different lengths, so some are padded
    text = tok.encode("abcdefab")
    alone = []
    with torch.no_grad():
        for prompt in prompts:
            logits = model(torch.tensor([prompt + text]))[0]
            alone.append(-F.cross_entropy(logits[len(prompt) - 1 : -1], torch.tensor(text), reduction="sum").item())
    assert header_scores(model, prompts, text) == pytest.approx(alone, abs=1e-4)


def test_a_model_that_reads_the_party_picks_each_speech_s_own_party() -> None:
    tok = tokenizer()
    model = tiny_gpt(tok.vocab_size)
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):
        rows = []
        for _ in range(12):
            record = speech(rng.choice(PARTIES), rng)
            rows.append(tok.encode(format_header({"party": record.party, "year": 2019}) + record.text))
        batch = torch.tensor(rows)
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    held_out = [speech(p, rng) for p in PARTIES for _ in range(5)] + [SpeechRecord(text="ab", party="A", year=2019)]
    check = check_header(model, tok, held_out, ["A", "B", "C"], per_party=4, context_length=64)
    assert check.speeches == 12  # four of each party; the two-letter speech is too short to say anything
    assert check.own_party_share == 1.0
    assert set(check.per_party) == set(PARTIES)
    assert check.gain_nats_per_token > 0.1

    untrained = tiny_gpt(tok.vocab_size).eval()
    blind = check_header(untrained, tok, held_out, PARTIES, per_party=4, context_length=64)
    assert abs(blind.gain_nats_per_token) < check.gain_nats_per_token / 5


def test_parties_without_held_out_speeches_are_left_out() -> None:
    tok = tokenizer()
    rng = random.Random(1)
    held_out = [speech("A", rng), speech("B", rng)]
    check = check_header(tiny_gpt(tok.vocab_size).eval(), tok, held_out, PARTIES, per_party=3, context_length=64)
    assert check.speeches == 2
    assert set(check.per_party) == {"A", "B"}
    empty = check_header(tiny_gpt(tok.vocab_size).eval(), tok, [], PARTIES, per_party=3, context_length=64)
    assert (empty.speeches, empty.own_party_share, empty.gain_nats_per_token) == (0, 0.0, 0.0)
