"""One model, many clients: requests wait for a slot; the active streams are decoded together.

A model whose family offers a batch decoder (``InferenceModel.batch_decoder``: both families) is
batched continuously: each step is one forward pass over every active stream, new requests are
prefilled (those that arrived together in one pass, where the family can) and join at the next step,
a finished or cancelled one leaves at once. Streams the batch does not take (guidance, or an answer
longer than the context allows without sliding the window), and every stream of a family without a
batch decoder, take one token each in turn between batch steps, each with its own cache
(``InferenceModel.stream``). Sampling is per stream either way: its own seeded generator and settings.
One thread owns the model and decodes (``run``: the thread that loaded it, in ``serve``); callers hear
from it through a ``deliver`` callback (the server turns that into server-sent events).
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
    handle: int | None = None  # its row in the batch decoder, when it is batched

    def cancel(self) -> None:
        """The client went away: a waiting job gives up its place at once, a running one at its next turn."""
        if not self.cancelled.is_set():
            self.cancelled.set()
            if self.on_cancel is not None:
                self.on_cancel(self)


class Engine:
    """Decodes up to ``max_concurrent`` streams together; up to ``queue_size`` more wait for a slot."""

    def __init__(
        self,
        model: InferenceModel,
        max_concurrent: int = 8,
        queue_size: int = 64,
        queue_timeout_s: float = 60.0,
        *,
        own_thread: bool = True,
    ) -> None:
        """``own_thread``: decode on a thread of the engine's own; False: the caller runs ``run`` (``serve`` does,
        on the thread that loaded the model: see ``run``)."""
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
        self.batch = model.batch_decoder(max_concurrent) if model.batch_decoder is not None else None
        self.batched_steps = 0  # forward passes over the batch, and the most rows one of them had
        self.largest_batch = 0
        self.joined_together = 0  # the most new streams prefilled in one call
        self._worker: threading.Thread | None = None
        if own_thread:
            self._worker = threading.Thread(target=self.run, name="ml_playground-engine", daemon=True)
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
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout_s)

    def run(self) -> None:
        """Decode until ``stop``, on the calling thread.

        Which thread matters on a CPU: PyTorch's operators run on an OpenMP team per thread that calls
        them, and once two threads have teams (the one that loaded the model and this one) they share the
        cores badly: measured on a 2-core Xeon, a layer norm of 8 rows took 63 us on a second thread
        against 5 us on the first, and a decode step of the bench model 10.6 ms against 4.0 ms. So
        ``serve`` decodes on the thread that loaded the model and puts the web server on another.
        """
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
                jobs = list(self._active)
                self._active.clear()
                self._stepping = len(jobs)
            finished = self._advance(jobs)
            with self._cond:
                self._stepping = 0
                ending = self._ending
                going = [job for job in jobs if job not in finished]
                if not ending:
                    self._active.extend(going)
            if ending:
                for job in going:
                    self._leave(job)
                    self._end(job, "length")

    @staticmethod
    def _run_task(task: Callable[[], object], future: Future[object]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(task())
        except Exception as exc:  # the caller hears of it through the future
            future.set_exception(exc)

    def _advance(self, jobs: list[Job]) -> set[Job]:
        """New jobs start (the batch prefills the ones it takes and draws their first token), then one batched
        step for every batched job and one token for the first of the others, which then goes to the back.
        Returns the jobs that ended."""
        ended: set[Job] = set()
        joining: list[Job] = []  # new jobs the batch takes: prefilled together
        for job in jobs:
            if job.cancelled.is_set():
                self._leave(job)
                ended.add(job)
            elif job.text is None:
                request = job.request
                if self.batch is not None and self.batch.admits(
                    len(request.prompt_ids), request.params, joining=len(joining)
                ):
                    joining.append(job)
                elif self._start(job):
                    ended.add(job)
        ended |= self._join(joining)
        batched = [job for job in jobs if job.handle is not None and job not in ended and job.text is not None]
        if self.batch is not None and batched:
            try:
                drawn = self.batch.step()
            except Exception as exc:  # a bug or a device error: these requests fail, the server goes on
                traceback.print_exc(file=sys.stderr)
                for job in batched:
                    self._leave(job)
                    job.deliver(Failed(f"generation failed ({type(exc).__name__}: {exc})"))
                    ended.add(job)
                return ended
            self.batched_steps += 1
            self.largest_batch = max(self.largest_batch, len(batched))
            for job in batched:
                assert job.handle is not None
                if self._push(job, drawn[job.handle]):
                    ended.add(job)
        others = [job for job in jobs if job.handle is None and job.tokens is not None and job not in ended]
        if others:
            job = others[0]
            if self._step(job):
                ended.add(job)
            jobs.remove(job)
            jobs.append(job)  # round robin among the streams that are not batched
        return ended

    def _text(self, job: Job) -> TextStream:
        model = self.model
        job.text = TextStream(model.tokenizer, model.stop_ids, stop_in_text=False, stop_strings=job.request.stop)
        return job.text

    def _join(self, jobs: list[Job]) -> set[Job]:
        """New jobs into the batch, prefilled together (one forward pass where the family can), each with its
        first token; the ones that ended."""
        if not jobs or self.batch is None:
            return set()
        for job in jobs:
            self._text(job)
        try:
            started = self.batch.add_many(
                [list(job.request.prompt_ids) for job in jobs], [job.request.params for job in jobs]
            )
        except Exception as exc:  # a bug, a device error or a bad request: it fails, the server goes on
            if len(jobs) > 1:  # one bad request must not fail the others: each is prefilled alone
                return set().union(*(self._join([job]) for job in jobs))
            traceback.print_exc(file=sys.stderr)
            jobs[0].deliver(Failed(f"generation failed ({type(exc).__name__}: {exc})"))
            return set(jobs)
        self.joined_together = max(self.joined_together, len(jobs))
        ended = set()
        for job, (handle, first) in zip(jobs, started, strict=True):
            job.handle = handle
            if self._push(job, first):
                ended.add(job)
        return ended

    def _start(self, job: Job) -> bool:
        """The first step of a job the batch does not take: onto its own stream. True if it ended."""
        model, request = self.model, job.request
        self._text(job)
        try:
            prompt = torch.tensor([request.prompt_ids], dtype=torch.long, device=model.device)
            job.tokens = model.stream(prompt, request.params)
        except Exception as exc:  # a bug or a device error: this request fails, the server goes on
            traceback.print_exc(file=sys.stderr)
            self._leave(job)
            job.deliver(Failed(f"generation failed ({type(exc).__name__}: {exc})"))
            return True
        return self._step(job)

    def _leave(self, job: Job) -> None:
        """A batched job gives its row back."""
        if job.handle is not None and self.batch is not None:
            self.batch.remove(job.handle)
            job.handle = None

    def _step(self, job: Job) -> bool:
        """One token for an unbatched ``job``; True when it has ended."""
        assert job.tokens is not None
        try:
            token = next(job.tokens, None)
        except Exception as exc:  # a bug or a device error: this request fails, the server goes on
            traceback.print_exc(file=sys.stderr)
            job.deliver(Failed(f"generation failed ({type(exc).__name__}: {exc})"))
            return True
        if token is None:
            return self._end(job, "length")
        return self._push(job, int(token[0, 0]))

    def _push(self, job: Job, token: int) -> bool:
        """Deliver the text of ``token``; True (and the job ended, its row given back) when it finishes."""
        assert job.text is not None
        if delta := job.text.push(token):
            job.deliver(Delta(delta))
        if job.text.finish_reason is not None:
            self._leave(job)
            return self._end(job, job.text.finish_reason)
        if job.text.tokens >= job.request.params.max_new_tokens:
            self._leave(job)
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
