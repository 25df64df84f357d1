"""``ml_playground serve`` as users run it: a real server process on loopback, real HTTP clients."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import openai
import pytest

from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.errors import UserError
from ml_playground.serving.server import build_served, serving_process
from tests.serving_helpers import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIMIT = 300
SERVE = [f"serve.max_tokens_limit={LIMIT}", "serve.max_concurrent=8", "serve.queue_size=8"]


@pytest.fixture(scope="module")
def server(trained_tiny: tuple[ExperimentConfig, list[str]]) -> Iterator[ServerProcess]:
    _, overrides = trained_tiny
    with ServerProcess("shakespeare", [*overrides, *SERVE]) as running:
        yield running


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0)


def stream_events(response: httpx.Response) -> list[Any]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_completions_plain_and_streamed_agree_through_the_openai_client(server: ServerProcess) -> None:
    with client(server) as api:
        completions_agree(api)


def completions_agree(api: openai.OpenAI) -> None:
    assert [m.id for m in api.models.list().data] == ["shakespeare"]
    whole = api.completions.create(model="shakespeare", prompt="ROMEO:", max_tokens=40, seed=7, temperature=0.8)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (6, 40)
    text = whole.choices[0].text
    assert len(text) == 40  # a character model: one character per token
    chunks = list(
        api.completions.create(
            model="shakespeare",
            prompt="ROMEO:",
            max_tokens=40,
            seed=7,
            temperature=0.8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    # streamed as the tokens come; a client that reads slower than the model writes gets them joined
    assert 1 <= len([c for c in chunks if c.choices and c.choices[0].text]) <= 40
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 40
    other_seed = api.completions.create(model="shakespeare", prompt="ROMEO:", max_tokens=40, seed=8)
    assert other_seed.choices[0].text != text


def test_a_stop_sequence_ends_the_completion_before_it(server: ServerProcess) -> None:
    with client(server) as api:
        text = api.completions.create(model="shakespeare", prompt="ROMEO:", max_tokens=60, seed=3).choices[0].text
        stop = text[20:23]
        stopped = api.completions.create(model="shakespeare", prompt="ROMEO:", max_tokens=60, seed=3, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(stop)]


BAD_REQUESTS: list[tuple[str, dict[str, Any] | str, int, str | None, str]] = [
    ("/v1/completions", {"model": "gpt-4", "prompt": "a"}, 404, "model", "is not served here"),
    ("/v1/completions", {"prompt": "a", "max_tokens": LIMIT + 1}, 400, "max_tokens", "over this server's limit"),
    ("/v1/completions", {"prompt": "a", "temperature": "hot"}, 400, "temperature", "valid number"),
    ("/v1/completions", {"prompt": "a", "max_tokens": "5"}, 400, "max_tokens", "valid integer"),
    ("/v1/completions", {"prompt": "a", "logit_bias": {}}, 400, "logit_bias", "Extra inputs"),
    ("/v1/completions", {"prompt": "a", "n": 2}, 400, "n", "less than or equal to 1"),
    ("/v1/completions", {"prompt": "a" * 40}, 400, "prompt", "is 40 tokens; the model's context is 32"),
    ("/v1/completions", {"prompt": "a" * 40, "echo": True, "max_tokens": 32}, 400, "max_tokens", "leaves no room"),
    ("/v1/completions", {"prompt": "€ and ✓"}, 400, "prompt", "not in the"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt", "empty"),
    ("/v1/completions", {"prompt": "a", "party": "SPD"}, 400, "party", "header-conditioned"),
    ("/v1/completions", {"prompt": "a", "guidance": 2.0}, 400, "guidance", "header-conditioned"),
    ("/v1/completions", {"prompt": "a", "guidance": 11}, 400, "guidance", "less than or equal to 10"),
    ("/v1/completions", "{not json", 400, None, "not valid JSON"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400, "messages", "no chat template"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", "at least 1"),
    ("/v1/nothing", {}, 404, None, "Not Found"),
]


@pytest.mark.parametrize(("path", "body", "status", "param", "message"), BAD_REQUESTS)
def test_bad_requests_are_one_line_json_errors(
    server: ServerProcess, path: str, body: dict[str, Any] | str, status: int, param: str | None, message: str
) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(server.url + path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert "\n" not in error["message"]
    assert "Traceback" not in response.text


def test_eight_concurrent_streams_each_get_their_own_whole_answer(server: ServerProcess) -> None:
    with client(server) as api:
        expected = {
            seed: api.completions.create(model="shakespeare", prompt="First", max_tokens=80, seed=seed).choices[0].text
            for seed in range(8)
        }
    results: dict[int, tuple[str, int]] = {}
    in_flight: list[int] = []

    def stream(seed: int) -> None:
        body = {
            "prompt": "First",
            "max_tokens": 80,
            "seed": seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
            events = stream_events(response)
        in_flight.append(httpx.get(f"{server.url}/health").json()["active"])
        assert events[-1] == "[DONE]"
        text = "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"])
        results[seed] = (text, events[-2]["usage"]["completion_tokens"])

    threads = [threading.Thread(target=stream, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == {seed: (text, 80) for seed, text in expected.items()}


def test_a_client_that_leaves_mid_stream_frees_its_slot(server: ServerProcess) -> None:
    body = {"prompt": "First", "max_tokens": LIMIT, "seed": 1, "stream": True, "temperature": 1.0}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert httpx.get(f"{server.url}/health").json()["active"] == 1
    deadline = time.monotonic() + 20
    while httpx.get(f"{server.url}/health").json()["active"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(f"{server.url}/health").json() == {
        "status": "ok",
        "model": "shakespeare",
        "active": 0,
        "waiting": 0,
    }
    with client(server) as api:
        after = api.completions.create(model="shakespeare", prompt="First", max_tokens=5, seed=1)
    assert after.usage is not None
    assert after.usage.completion_tokens == 5


def test_the_web_page_and_the_model_description(server: ServerProcess) -> None:
    page = httpx.get(server.url + "/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "<script" in page.text
    assert "http://" not in page.text.replace("http://www.w3.org", "")  # self-contained: nothing fetched from elsewhere
    model = httpx.get(f"{server.url}/v1/models").json()["data"][0]
    assert model["context_length"] == 32
    assert model["chat"] is False
    assert model["conditions"] is None
    assert model["step"] == 30


def test_sigterm_lets_a_running_stream_finish_and_exits_cleanly(
    trained_tiny: tuple[ExperimentConfig, list[str]],
) -> None:
    _, overrides = trained_tiny
    long = 4000  # a stream that outlasts the request sent during the drain
    with ServerProcess("shakespeare", [*overrides, *SERVE, f"serve.max_tokens_limit={long}"]) as running:
        body = {"prompt": "First", "max_tokens": long, "seed": 2, "stream": True}
        with httpx.stream("POST", f"{running.url}/v1/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            running.process.send_signal(signal.SIGTERM)
            refused = httpx.post(f"{running.url}/v1/completions", json={"prompt": "a", "max_tokens": 2}, timeout=10)
            for _ in range(20):  # the signal may reach the server a moment after the request
                if refused.status_code == 503:
                    break
                time.sleep(0.05)
                refused = httpx.post(f"{running.url}/v1/completions", json={"prompt": "a", "max_tokens": 2}, timeout=10)
            rest = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
        assert refused.status_code == 503  # still listening while the stream finishes: a JSON answer, not a refusal
        assert refused.json()["error"]["type"] == "server_shutting_down"
        assert rest[-1] == "[DONE]"
        assert json.loads(rest[-2])["choices"][0]["finish_reason"] == "length"
        assert running.process.wait(30) == -signal.SIGTERM  # uvicorn re-raises the signal once it has shut down
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{running.url}/health")


def test_a_server_process_for_a_client_in_this_one(trained_tiny: tuple[ExperimentConfig, list[str]]) -> None:
    """``serving_process``: serve's own wiring in a spawned process; a model that cannot load is one line."""
    config, _ = trained_tiny
    with serving_process(partial(build_served, config, "tiny", engine_thread=False)) as url:
        body = {"prompt": "ROMEO:", "max_tokens": 5, "temperature": 0}
        answer = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
        assert answer["usage"]["completion_tokens"] == 5
    with pytest.raises(httpx.TransportError):  # stopped on leaving
        httpx.get(f"{url}/health", timeout=5)
    missing = partial(build_served, config, "tiny", "/nonexistent/checkpoint", engine_thread=False)
    with pytest.raises(UserError, match=r"ended before it listened \(exit code 2\)"), serving_process(missing):
        pass
