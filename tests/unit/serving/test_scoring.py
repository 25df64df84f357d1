"""Scoring given tokens, and the two OpenAI shapes the log-probabilities are returned in."""

from __future__ import annotations

import pytest
import torch

from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.families.base import InferenceModel
from ml_playground.serving.app import Served, chat_logprobs, legacy_logprobs
from ml_playground.serving.engine import Engine
from ml_playground.serving.schemas import ChatRequest, CompletionRequest
from ml_playground.serving.scoring import score_tokens
from tests.unit.serving.conftest import TOKENIZER

pytestmark = pytest.mark.unit


def test_scores_are_the_model_s_log_softmax_at_each_next_token(model: InferenceModel) -> None:
    ids = TOKENIZER.encode("the cat sat")
    scores = score_tokens(model, ids, top=3)
    with torch.no_grad():
        expected = torch.log_softmax(model.module(torch.tensor([ids]))[0].float(), dim=-1)
    assert scores.logprobs[0] is None
    assert scores.top[0] is None
    for position in range(1, len(ids)):
        assert scores.logprobs[position] == pytest.approx(float(expected[position - 1, ids[position]]), abs=1e-6)
        top = scores.top[position]
        assert top is not None
        assert len(top) == 3
        assert top[0][1] == pytest.approx(float(expected[position - 1].max()), abs=1e-6)
    assert score_tokens(model, ids, top=0).top[1:] == [[] for _ in ids[1:]]


def test_the_legacy_and_the_chat_shapes(model: InferenceModel) -> None:
    config = load_config(experiment_config_path("shakespeare"), [])
    engine = Engine(model)
    try:
        served = Served("tiny", config, model, engine)
        ids = TOKENIZER.encode("ab cd")
        scores = score_tokens(model, ids, top=2)
        legacy = legacy_logprobs(served, scores, first=2, offset=2)
        assert legacy["tokens"] == [" ", "c", "d"]
        assert legacy["text_offset"] == [2, 3, 4]
        assert legacy["token_logprobs"] == scores.logprobs[2:]
        assert all(len(top) == 2 for top in legacy["top_logprobs"])
        chat = chat_logprobs(served, scores, first=3)
        assert [entry["token"] for entry in chat["content"]] == ["c", "d"]
        assert chat["content"][0]["bytes"] == [ord("c")]
        assert len(chat["content"][0]["top_logprobs"]) == 2
    finally:
        engine.stop()


def test_request_shapes_take_every_prompt_form_and_refuse_bad_combinations() -> None:
    assert CompletionRequest(prompt="a").prompts == ["a"]
    assert CompletionRequest(prompt=["a", "b"]).prompts == ["a", "b"]
    assert CompletionRequest(prompt=[1, 2]).prompts == [[1, 2]]
    assert CompletionRequest(prompt=[[1], [2, 3]]).prompts == [[1], [2, 3]]
    assert CompletionRequest(prompt="a").is_plain
    assert not CompletionRequest(prompt="a", logprobs=0).is_plain
    assert not CompletionRequest(prompt=["a", "b"]).is_plain
    with pytest.raises(ValueError, match="top_logprobs needs logprobs"):
        ChatRequest.model_validate_json('{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}')
    with pytest.raises(ValueError, match="logprobs cannot be combined with stream"):
        ChatRequest.model_validate_json(
            '{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "stream": true}'
        )
