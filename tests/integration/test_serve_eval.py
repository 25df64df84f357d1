"""The server for the evaluation harness and for many users: logprobs and echo, prompt lists, tokenize,
an API key, a body limit, metrics, a bounded burst. A real server process on loopback, real clients."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from ml_playground.configuration.models import ExperimentConfig
from ml_playground.evaluation.runner import evaluate_checkpoint
from ml_playground.families.registry import family_of
from tests.serving_helpers import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "test-key-1234"
BODY_LIMIT = 4096
SERVE = [
    f"serve.api_key='{KEY}'",
    f"serve.max_body_bytes={BODY_LIMIT}",
    "serve.max_concurrent=2",
    "serve.queue_size=6",
    "serve.max_tokens_limit=200",
]
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXT = "ROMEO:\nWhat light through"  # 25 characters: within the tiny model's context of 32 with room to generate


@pytest.fixture(scope="module")
def server(trained_tiny: tuple[ExperimentConfig, list[str]]) -> Iterator[ServerProcess]:
    _, overrides = trained_tiny
    with ServerProcess("shakespeare", [*overrides, *SERVE]) as running:
        yield running


def post(server: ServerProcess, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=AUTH, timeout=60, **kwargs)


def test_echoed_prompt_logprobs_are_our_evaluation_s_per_token_losses(
    server: ServerProcess, trained_tiny: tuple[ExperimentConfig, list[str]], tmp_path: Path
) -> None:
    config, _ = trained_tiny
    response = post(server, "/v1/completions", {"prompt": TEXT, "echo": True, "max_tokens": 0, "logprobs": 1})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    logprobs = choice["logprobs"]
    assert choice["text"] == TEXT
    assert "".join(logprobs["tokens"]) == TEXT
    assert logprobs["token_logprobs"][0] is None
    assert logprobs["top_logprobs"][0] is None
    assert logprobs["text_offset"] == list(range(len(TEXT)))  # one character per token
    model = family_of(config).load_for_inference(config, config.sample.checkpoint)
    ids = torch.tensor([model.tokenizer.encode(TEXT)])
    with torch.no_grad():
        expected = torch.log_softmax(model.module(ids)[0, :-1].float(), dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    assert logprobs["token_logprobs"][1:] == pytest.approx(expected.tolist(), abs=1e-5)
    for value, top in zip(logprobs["token_logprobs"][1:], logprobs["top_logprobs"][1:], strict=True):
        assert len(top) == 1
        assert max(top.values()) >= value - 1e-6
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    report = evaluate_checkpoint(config, text_file, None)
    served_nll = -sum(logprobs["token_logprobs"][1:])
    assert report.tokens == len(TEXT) - 1
    assert served_nll / report.tokens == pytest.approx(report.val_loss, rel=1e-5)
    assert report.bits_per_byte == pytest.approx(served_nll / math.log(2) / report.bytes, rel=1e-5)


def test_an_echoed_prompt_longer_than_the_context_is_scored_in_eval_s_windows(
    server: ServerProcess, trained_tiny: tuple[ExperimentConfig, list[str]], tmp_path: Path
) -> None:
    """lm-evaluation-harness sends a window one token longer than the context and asks for one token more."""
    config, _ = trained_tiny
    text = "ROMEO:\nWhat light through yonder window breaks? It is the east, and Juliet the sun."  # 82 > 32
    body = {"prompt": text, "echo": True, "max_tokens": 1, "logprobs": 0, "temperature": 0}
    response = post(server, "/v1/completions", body)
    assert response.status_code == 200, response.text
    logprobs = response.json()["choices"][0]["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(text) + 1  # the prompt and the one generated token
    text_file = tmp_path / "long.txt"
    text_file.write_text(text, encoding="utf-8")
    report = evaluate_checkpoint(config, text_file, None)
    served_nll = -sum(logprobs["token_logprobs"][1 : len(text)])
    assert report.tokens == len(text) - 1
    assert served_nll / report.tokens == pytest.approx(report.val_loss, rel=1e-5)


def test_several_prompts_token_ids_and_greedy_completion_logprobs(server: ServerProcess) -> None:
    tokens = post(server, "/tokenize", {"prompt": "ROMEO:"}).json()
    assert tokens["count"] == len(tokens["tokens"]) == 6
    assert tokens["max_model_len"] == 32
    assert post(server, "/detokenize", {"tokens": tokens["tokens"]}).json() == {"prompt": "ROMEO:"}
    same = post(server, "/tokenize", {"prompt": "ROMEO:", "add_special_tokens": False}).json()  # as lm-eval asks
    assert same["tokens"] == tokens["tokens"]
    info = httpx.get(f"{server.url}/tokenizer_info", headers=AUTH, timeout=30).json()
    assert info == {
        "eos_token": None,  # a char vocabulary has none
        "bos_token": None,
        "pad_token": None,
        "chat_template": None,
        "model_max_length": 32,
    }
    body = {"max_tokens": 8, "temperature": 0, "logprobs": 2, "seed": 1}
    as_text = post(server, "/v1/completions", {**body, "prompt": ["ROMEO:", "JULIET:"]}).json()
    as_ids = post(server, "/v1/completions", {**body, "prompt": tokens["tokens"]}).json()
    as_id_lists = post(server, "/v1/completions", {**body, "prompt": [tokens["tokens"], tokens["tokens"]]}).json()
    assert [c["index"] for c in as_text["choices"]] == [0, 1]
    assert as_ids["choices"][0]["text"] == as_text["choices"][0]["text"]
    assert [c["text"] for c in as_id_lists["choices"]] == [as_text["choices"][0]["text"]] * 2
    assert as_text["usage"]["completion_tokens"] == 16
    first = as_text["choices"][0]
    assert "".join(first["logprobs"]["tokens"]) == first["text"]
    assert first["logprobs"]["text_offset"][0] == len("ROMEO:")  # offsets in prompt + completion
    for value, top in zip(first["logprobs"]["token_logprobs"], first["logprobs"]["top_logprobs"], strict=True):
        assert value == pytest.approx(max(top.values()), abs=1e-6)  # greedy: each token is the likeliest
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0) as api:
        echoed = api.completions.create(model="shakespeare", prompt=TEXT, echo=True, max_tokens=1, logprobs=1)
    assert echoed.choices[0].logprobs is not None
    assert len(echoed.choices[0].logprobs.tokens or []) == len(TEXT) + 1


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/completions", {"prompt": "a", "logprobs": 6}, "logprobs"),
    ("/v1/completions", {"prompt": [5, 9999]}, "prompt"),
    ("/v1/completions", {"prompt": []}, "prompt"),
    ("/v1/completions", {"prompt": ["a", 3]}, "prompt"),
    ("/v1/completions", {"prompt": [[]]}, "prompt"),
    ("/v1/completions", {"prompt": "a", "echo": True, "stream": True}, "echo"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 40, "logprobs": 1}, "max_tokens"),
    ("/v1/completions", {"prompt": "a", "best_of": 2}, "best_of"),
    ("/v1/completions", {"prompt": "a", "repetition_penalty": 2.5}, "repetition_penalty"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/tokenize", {"prompt": "€"}, "prompt"),
    ("/tokenize", {"prompt": "a", "add_special_tokens": True}, "add_special_tokens"),
]


@pytest.mark.parametrize(("path", "body", "named"), BAD, ids=[f"{p} {b}" for p, b, _ in BAD])
def test_malformed_requests_are_4xx_json_naming_the_field(
    server: ServerProcess, path: str, body: dict[str, Any], named: str
) -> None:
    response = post(server, path, body)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert named in error["message"] or error["param"] == named, error


def test_the_key_the_body_limit_and_the_metrics(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200  # open without the key
    missing = httpx.get(f"{server.url}/v1/models", timeout=10)
    wrong = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    probing = [httpx.get(f"{server.url}/admin-{n}", timeout=10) for n in range(3)]  # paths the server does not know
    assert missing.status_code == wrong.status_code == 401
    assert {response.status_code for response in probing} == {401}
    assert missing.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.url}/v1/models", headers=AUTH, timeout=10).status_code == 200
    too_large = post(server, "/v1/completions", {"prompt": "a" * (BODY_LIMIT + 10)})
    assert too_large.status_code == 413
    assert "limit" in too_large.json()["error"]["message"]
    chunked = httpx.post(
        f"{server.url}/v1/completions",
        content=iter([b'{"prompt": "', b"a" * (BODY_LIMIT + 10), b'"}']),
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=10,
    )
    assert chunked.status_code == 413
    not_json = httpx.post(f"{server.url}/v1/completions", content=b"{nope", headers=AUTH, timeout=10)
    assert not_json.status_code == 400
    post(server, "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 3})
    metrics = httpx.get(f"{server.url}/metrics", headers=AUTH, timeout=10).text
    assert 'ml_playground_requests_total{endpoint="/v1/completions",status="200"}' in metrics
    assert 'ml_playground_requests_total{endpoint="/v1/completions",status="413"} 2.0' in metrics
    assert 'ml_playground_requests_total{endpoint="/v1/models",status="401"} 2.0' in metrics
    assert 'ml_playground_requests_total{endpoint="other",status="401"} 3.0' in metrics  # one label, not three
    assert "admin-" not in metrics
    assert "ml_playground_time_to_first_token_seconds_count" in metrics
    assert "ml_playground_queue_depth 0.0" in metrics


def test_a_burst_of_a_hundred_clients_gets_answers_or_503s_and_the_server_stays_healthy(
    server: ServerProcess,
) -> None:
    statuses: list[int] = []
    bodies: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        response = post(server, "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 20, "seed": index})
        with lock:
            statuses.append(response.status_code)
            bodies.append(response.json())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(statuses) == 100
    assert set(statuses) <= {200, 503}
    assert 200 in statuses
    assert 503 in statuses  # 2 slots and 6 queue places cannot hold 100 at once
    assert all(b["error"]["type"] == "server_busy" for b, s in zip(bodies, statuses, strict=True) if s == 503)
    health = httpx.get(f"{server.url}/health", timeout=10).json()
    assert (health["status"], health["active"], health["waiting"]) == ("ok", 0, 0)
