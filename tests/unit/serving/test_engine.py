from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.families.base import InferenceModel
from ml_playground.families.gpt.generation import generate_stream
from ml_playground.serving.engine import (
    Delta,
    Done,
    Engine,
    EngineBusyError,
    EngineClosedError,
    Event,
    Failed,
    GenerationRequest,
)
from tests.unit.serving.conftest import TOKENIZER

pytestmark = pytest.mark.unit


class Collected:
    """What the engine delivered for one job, and a way to wait for its end."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.ended = threading.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if not isinstance(event, Delta):
            self.ended.set()

    def wait(self) -> Event:
        assert self.ended.wait(30), "the job never ended"
        return self.events[-1]

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Delta))


def request(seed: int, tokens: int = 40, prompt: str = "to be") -> GenerationRequest:
    return GenerationRequest(
        TOKENIZER.encode(prompt), SamplingParams(max_new_tokens=tokens, temperature=1.0, seed=seed)
    )


@pytest.fixture
def engine(model: InferenceModel) -> Iterator[Engine]:
    engine = Engine(model, max_concurrent=8, queue_size=8)
    yield engine
    engine.stop()


def run_alone(model: InferenceModel, req: GenerationRequest) -> str:
    engine = Engine(model, max_concurrent=1, queue_size=0)
    try:
        collected = Collected()
        engine.submit(req, collected)
        collected.wait()
        return collected.text
    finally:
        engine.stop()


def test_interleaved_streams_give_the_answers_each_gives_alone(model: InferenceModel, engine: Engine) -> None:
    requests = [request(seed) for seed in range(10)]  # 8 decoded at once, 2 wait for a slot
    collected = [Collected() for _ in requests]
    for req, sink in zip(requests, collected, strict=True):
        engine.submit(req, sink)
    ends = [sink.wait() for sink in collected]
    assert all(isinstance(end, Done) and end.finish_reason == "length" for end in ends)
    assert [end.completion_tokens for end in ends if isinstance(end, Done)] == [40] * 10
    assert [end.prompt_tokens for end in ends if isinstance(end, Done)] == [5] * 10
    assert len({sink.text for sink in collected}) == 10  # different seeds, different answers
    assert [sink.text for sink in collected[:3]] == [run_alone(model, req) for req in requests[:3]]
    assert engine.load() == (0, 0)


def test_a_full_queue_is_refused_and_a_cancelled_job_frees_its_slot(model: InferenceModel) -> None:
    engine = Engine(model, max_concurrent=1, queue_size=1)
    try:
        first, second = Collected(), Collected()
        long_job = engine.submit(request(0, tokens=100_000), first)
        engine.submit(request(1, tokens=5), second)
        with pytest.raises(EngineBusyError, match="1 slots and 1 queue places"):
            engine.submit(request(2), Collected())
        long_job.cancel()
        end = second.wait()
        assert isinstance(end, Done)
        assert end.completion_tokens == 5
        assert not first.ended.is_set()  # a cancelled job says nothing more: its client is gone
    finally:
        engine.stop()


def test_stop_strings_end_a_stream_and_failures_stay_with_their_request(model: InferenceModel, engine: Engine) -> None:
    alone = run_alone(model, request(3))
    stop = alone[5:7]
    stopped = Collected()
    engine.submit(GenerationRequest(TOKENIZER.encode("to be"), request(3).params, stop=(stop,)), stopped)
    end = stopped.wait()
    assert isinstance(end, Done)
    assert end.finish_reason == "stop"
    assert stopped.text == alone[: alone.index(stop)]

    broken = Collected()
    engine.submit(GenerationRequest([TOKENIZER.vocab_size + 5], request(4).params), broken)  # no such token
    failed = broken.wait()
    assert isinstance(failed, Failed)
    assert "IndexError" in failed.message
    healthy = Collected()
    engine.submit(request(5, tokens=3), healthy)
    assert isinstance(healthy.wait(), Done)


def test_shutting_down_refuses_new_requests_and_ends_running_streams_cleanly(model: InferenceModel) -> None:
    engine = Engine(model, max_concurrent=1, queue_size=4)
    try:
        running, waiting = Collected(), Collected()
        engine.submit(request(0, tokens=100_000), running)
        engine.submit(request(1, tokens=100_000), waiting)
        engine.close()
        with pytest.raises(EngineClosedError):
            engine.submit(request(2), Collected())
        engine.finish_all()
        for sink in (running, waiting):
            end = sink.wait()
            assert isinstance(end, Done)
            assert end.finish_reason == "length"
            assert len(sink.text) < 100_000
    finally:
        engine.stop()


def test_a_waiting_job_that_is_cancelled_gives_up_its_place_at_once(model: InferenceModel) -> None:
    gate = threading.Event()

    def held(prompt: torch.Tensor, params: SamplingParams) -> Iterator[torch.Tensor]:
        gate.wait(30)  # the one slot stays taken until the test lets go
        yield from generate_stream(model.module, prompt, params)  # type: ignore[arg-type]

    slow = dataclasses.replace(model, stream=held)
    engine = Engine(slow, max_concurrent=1, queue_size=1)
    try:
        first, second = Collected(), Collected()
        request = GenerationRequest(TOKENIZER.encode("ab"), SamplingParams(max_new_tokens=3))
        engine.submit(request, first)
        deadline = time.monotonic() + 10
        while engine.load() != (1, 0) and time.monotonic() < deadline:  # the first one holds the slot
            time.sleep(0.01)
        queued = engine.submit(request, second)
        with pytest.raises(EngineBusyError):
            engine.submit(request, Collected())
        queued.cancel()
        assert engine.load()[1] == 0  # synchronously: the place is free before the slot is
        third = Collected()
        engine.submit(request, third)  # accepted: the queue place was given up
        gate.set()
        assert isinstance(first.wait(), Done)
        assert isinstance(third.wait(), Done)
        assert second.events == []
    finally:
        gate.set()
        engine.stop()


def test_a_request_that_waits_past_the_limit_is_answered_503(model: InferenceModel) -> None:
    gate = threading.Event()

    def held(prompt: torch.Tensor, params: SamplingParams) -> Iterator[torch.Tensor]:
        gate.wait(30)
        yield from generate_stream(model.module, prompt, params)  # type: ignore[arg-type]

    slow = dataclasses.replace(model, stream=held)
    engine = Engine(slow, max_concurrent=1, queue_size=2, queue_timeout_s=0.2)
    try:
        request = GenerationRequest(TOKENIZER.encode("ab"), SamplingParams(max_new_tokens=2))
        engine.submit(request, Collected())
        late = Collected()
        engine.submit(request, late)
        threading.Timer(0.6, gate.set).start()
        ended = late.wait()
        assert isinstance(ended, Failed)
        assert ended.status == 503
        assert "waited over 0.2 s" in ended.message
    finally:
        gate.set()
        engine.stop()


def test_a_task_runs_on_the_engine_thread_between_steps(model: InferenceModel) -> None:
    engine = Engine(model)
    try:
        assert engine.call(lambda: threading.current_thread().name).result(10) == "ml_playground-engine"
        failing = engine.call(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(10)
    finally:
        engine.stop()
    with pytest.raises(EngineClosedError):
        engine.call(lambda: None)


def unbatched(model: InferenceModel) -> InferenceModel:
    return dataclasses.replace(model, batch_decoder=None)


PROMPTS = ["to be", "or not to be, that", "a", "the question is whether", "tis nobler in the mind"]


def test_batched_streams_give_the_answers_each_gives_alone(batched_model: InferenceModel) -> None:
    requests = [
        GenerationRequest(
            TOKENIZER.encode(PROMPTS[i % len(PROMPTS)]),
            SamplingParams(max_new_tokens=20 + i, temperature=0.0 if i % 3 == 0 else 1.0, top_k=8, seed=i),
        )
        for i in range(10)
    ]  # 8 decoded at once, 2 join when the first ones leave
    engine = Engine(batched_model, max_concurrent=8, queue_size=8)
    try:
        collected = [Collected() for _ in requests]
        for req, sink in zip(requests, collected, strict=True):
            engine.submit(req, sink)
        ends = [sink.wait() for sink in collected]
        assert engine.largest_batch == 8
        assert engine.batched_steps < sum(20 + i for i in range(10)) / 4  # one forward pass serves many streams
    finally:
        engine.stop()
    assert [end.completion_tokens for end in ends if isinstance(end, Done)] == [20 + i for i in range(10)]
    alone = [run_alone(unbatched(batched_model), req) for req in requests]  # the one-stream path, no batch
    assert [sink.text for sink in collected] == alone


def test_a_cancelled_stream_leaves_the_batch_and_the_rest_go_on(batched_model: InferenceModel) -> None:
    engine = Engine(batched_model, max_concurrent=4, queue_size=4)
    try:
        endless, rest = Collected(), [Collected() for _ in range(3)]
        long_job = engine.submit(GenerationRequest(TOKENIZER.encode("to be"), request(9, tokens=50).params), endless)
        requests = [GenerationRequest(TOKENIZER.encode(PROMPTS[i]), request(i, tokens=30).params) for i in range(3)]
        for req, sink in zip(requests, rest, strict=True):
            engine.submit(req, sink)
        while not endless.events:
            time.sleep(0.001)
        long_job.cancel()
        assert all(isinstance(sink.wait(), Done) for sink in rest)
        assert engine.load() == (0, 0)
        assert engine.batch is not None
        assert len(engine.batch) == 0  # every row given back
    finally:
        engine.stop()
    assert [sink.text for sink in rest] == [run_alone(unbatched(batched_model), req) for req in requests]


def test_requests_that_arrive_together_are_prefilled_together(batched_model: InferenceModel) -> None:
    requests = [GenerationRequest(TOKENIZER.encode(PROMPTS[i]), request(i, tokens=20).params) for i in range(4)]
    engine = Engine(batched_model, max_concurrent=8, queue_size=8, own_thread=False)
    sinks = [Collected() for _ in requests]
    for req, sink in zip(requests, sinks, strict=True):
        engine.submit(req, sink)  # all waiting before the engine's first step
    decoding = threading.Thread(target=engine.run)
    decoding.start()
    try:
        ends = [sink.wait() for sink in sinks]
    finally:
        engine.stop()
        decoding.join(30)
    assert engine.joined_together == 4
    assert all(isinstance(end, Done) for end in ends)
    assert [sink.text for sink in sinks] == [run_alone(unbatched(batched_model), r) for r in requests]


def test_streams_the_batch_cannot_take_run_beside_it(batched_model: InferenceModel) -> None:
    """An answer longer than the context allows (its window slides) takes the one-stream path, in turn."""
    long = GenerationRequest(TOKENIZER.encode("to be"), request(4, tokens=120).params)
    short = [GenerationRequest(TOKENIZER.encode(PROMPTS[i]), request(i, tokens=25).params) for i in range(3)]
    broken = GenerationRequest([TOKENIZER.vocab_size + 5], request(7, tokens=5).params)  # no such token
    engine = Engine(batched_model, max_concurrent=8, queue_size=8)
    try:
        sinks = [Collected() for _ in range(5)]
        for req, sink in zip([long, *short, broken], sinks, strict=True):
            engine.submit(req, sink)
        ends = [sink.wait() for sink in sinks]
    finally:
        engine.stop()
    assert isinstance(ends[-1], Failed)
    assert "IndexError" in ends[-1].message
    assert [sink.text for sink in sinks[:4]] == [run_alone(unbatched(batched_model), r) for r in [long, *short]]
    assert isinstance(ends[0], Done)
    assert ends[0].completion_tokens == 120
