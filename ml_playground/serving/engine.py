"""One model, many clients: requests wait for a slot, and the active streams take one token each in turn.

Every stream has its own seeded generator and its own cache (the family's ``InferenceModel.stream``),
so an answer is the same whether it was decoded alone or beside seven others: the streams are
interleaved, not batched. One worker thread owns the model; callers hear from it through a
``deliver`` callback (the server turns that into server-sent events).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from ml_playground.core.errors import UserError
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.families.base import InferenceModel
from ml_playground.sampling.decoding import FinishReason, TextStream

T = TypeVar("T")


class EngineBusyError(UserError):
    """Every slot and every place in the queue is taken."""


class EngineClosedError(UserError):
    """The server is shutting down and takes no new requests."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    stop: Sequence[str] = ()


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Done:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...] = ()  # the completion's tokens (a dropped stop token left out)


@dataclass(frozen=True)
class Failed:
    message: str
    status: int = 500  # 503: it waited longer than the queue's limit


Event = Delta | Done | Failed


@dataclass(eq=False)
class Job:
    request: GenerationRequest
    deliver: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: Iterator[torch.Tensor] | None = None
    text: TextStream | None = None
    submitted: float = field(default_factory=time.monotonic)
    on_cancel: Callable[[Job], None] | None = None

    def cancel(self) -> None:
        """The client went away: a waiting job gives up its place at once, a running one at its next turn."""
        if not self.cancelled.is_set():
            self.cancelled.set()
            if self.on_cancel is not None:
                self.on_cancel(self)


class Engine:
    """Decodes up to ``max_concurrent`` streams in turn; up to ``queue_size`` more wait for a slot."""

    def __init__(
        self, model: InferenceModel, max_concurrent: int = 8, queue_size: int = 64, queue_timeout_s: float = 60.0
    ) -> None:
        self.model = model
        self.max_concurrent = max_concurrent
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self._waiting: deque[Job] = deque()
        self._active: deque[Job] = deque()
        self._tasks: deque[tuple[Callable[[], object], Future[object]]] = deque()
        self._stepping = 0
        self._closed = False
        self._ending = False
        self._stopped = False
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="ml_playground-engine", daemon=True)
        self._worker.start()

    def submit(self, request: GenerationRequest, deliver: Callable[[Event], None]) -> Job:
        job = Job(request, deliver, on_cancel=self._withdraw)
        with self._cond:
            if self._closed:
                raise EngineClosedError("the server is shutting down")
            held = len(self._active) + self._stepping + len(self._waiting)
            if held >= self.max_concurrent + self.queue_size:
                raise EngineBusyError(f"all {self.max_concurrent} slots and {self.queue_size} queue places are taken")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def call(self, task: Callable[[], T]) -> Future[T]:
        """Run ``task`` on the engine's thread between two decoding steps (the model has one owner)."""
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise EngineClosedError("the server is shutting down")
            self._tasks.append((task, future))  # type: ignore[arg-type]
            self._cond.notify()
        return future

    def _withdraw(self, job: Job) -> None:
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)

    def _expired(self) -> list[Job]:
        """Waiting jobs past the queue's time limit, taken out of the queue (call with the lock held)."""
        now = time.monotonic()
        late = [job for job in self._waiting if now - job.submitted > self.queue_timeout_s]
        for job in late:
            self._waiting.remove(job)
        return late

    def load(self) -> tuple[int, int]:
        """(streams being decoded, requests waiting)."""
        with self._cond:
            return len(self._active) + self._stepping, len(self._waiting)

    def close(self) -> None:
        """Take no new requests; the ones already here run to their end."""
        with self._cond:
            self._closed = True

    def finish_all(self) -> None:
        """End every stream now, cleanly (finish reason ``length``): the grace period is over."""
        with self._cond:
            self._ending = True
            jobs = [*self._active, *self._waiting]
            self._active.clear()
            self._waiting.clear()
        for job in jobs:
            self._end(job, "length")

    def stop(self, timeout_s: float = 10.0) -> None:
        self.close()
        self.finish_all()
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._worker.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._active or self._waiting or self._tasks or self._stopped):
                    self._cond.wait()
                if self._stopped:
                    for _, future in self._tasks:
                        future.cancel()
                    return
                task = self._tasks.popleft() if self._tasks else None
            if task is not None:
                self._run_task(*task)
                continue
            with self._cond:
                late = self._expired()
            for job in late:
                job.deliver(Failed(f"waited over {self.queue_timeout_s:g} s for a slot; try again", status=503))
            with self._cond:
                if not (self._active or self._waiting):
                    continue
                while self._waiting and len(self._active) < self.max_concurrent:
                    self._active.append(self._waiting.popleft())
                job = self._active.popleft()
                self._stepping = 1
            finished = self._step(job)
            with self._cond:
                self._stepping = 0
                ending = self._ending
                if not finished and not ending:
                    self._active.append(job)
            if not finished and ending:
                self._end(job, "length")

    @staticmethod
    def _run_task(task: Callable[[], object], future: Future[object]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(task())
        except Exception as exc:  # the caller hears of it through the future
            future.set_exception(exc)

    def _step(self, job: Job) -> bool:
        """One token for ``job``; True when it has ended."""
        if job.cancelled.is_set():
            return True
        request = job.request
        try:
            if job.tokens is None or job.text is None:
                model = self.model
                job.text = TextStream(model.tokenizer, model.stop_ids, stop_in_text=False, stop_strings=request.stop)
                prompt = torch.tensor([request.prompt_ids], dtype=torch.long, device=model.device)
                job.tokens = model.stream(prompt, request.params)
            token = next(job.tokens, None)
        except Exception as exc:  # a bug or a device error: this request fails, the server goes on
            traceback.print_exc(file=sys.stderr)
            job.deliver(Failed(f"generation failed ({type(exc).__name__}: {exc})"))
            return True
        if token is None:
            return self._end(job, "length")
        if delta := job.text.push(int(token[0, 0])):
            job.deliver(Delta(delta))
        if job.text.finish_reason is not None:
            return self._end(job, job.text.finish_reason)
        if job.text.tokens >= request.params.max_new_tokens:
            return self._end(job, "length")
        return False

    def _end(self, job: Job, reason: FinishReason) -> bool:
        text = job.text
        if text is not None and text.finish_reason is None and (rest := text.finish()):
            job.deliver(Delta(rest))
        generated = text.tokens if text is not None else 0
        ids = tuple(text.ids) if text is not None else ()
        job.deliver(Done(reason, len(job.request.prompt_ids), generated, ids))
        return True
