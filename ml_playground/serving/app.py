"""The HTTP API: OpenAI's completions and chat completions (streamed as server-sent events), models, health.

Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with a 4xx status for
anything the client can fix and never a traceback. Every request goes through the same ``Engine``
and the family's ``InferenceModel``, whatever the family.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ml_playground.configuration.models import ExperimentConfig, SampleConfig
from ml_playground.core.errors import UserError
from ml_playground.core.sampling_rules import ContrastPrompt, SamplingParams
from ml_playground.families.base import InferenceModel
from ml_playground.sampling.conditioning import header_in_view, party_contrast, refuse_unconditioned
from ml_playground.serving.engine import (
    Delta,
    Done,
    Engine,
    EngineBusyError,
    EngineClosedError,
    Event,
    GenerationRequest,
    Job,
)
from ml_playground.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ml_playground.serving.metrics import ServerMetrics
from ml_playground.serving.schemas import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    GenerationFields,
    Prompt,
    TokenizeRequest,
)
from ml_playground.serving.scoring import TokenScores, score_tokens

DISCONNECT_POLL_S = 0.5


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")


def error_response(status: int, message: str, param: str | None = None, kind: str | None = None) -> JSONResponse:
    error = ApiError(status, message, param=param, kind=kind)
    body = {"error": {"message": error.message, "type": error.kind, "param": error.param, "code": None}}
    return JSONResponse(body, status_code=status)


@dataclass
class Served:
    """What the server serves: one experiment's model, its settings and its engine."""

    name: str
    config: ExperimentConfig
    model: InferenceModel
    engine: Engine
    conditions: Mapping[str, Any] | None = None  # a header-conditioned dataset's known speakers and parties
    created: int = field(default_factory=lambda: int(time.time()))
    api_key: str | None = None  # serve.api_key or ML_PLAYGROUND_API_KEY: clients send it as a bearer token
    metrics: ServerMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.engine.load)

    def describe(self) -> dict[str, Any]:
        conditions = None
        if self.conditions is not None:
            conditions = {
                "parties": sorted(self.conditions.get("parties", {})),
                "speakers": len(self.conditions.get("speakers", {})),
            }
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "ml_playground",
            "context_length": self.model.context_length,
            "step": self.model.step,
            "checkpoint": self.model.checkpoint,
            "chat": self.model.chat_ids is not None,
            "conditions": conditions,
            "max_tokens_limit": self.config.serve.max_tokens_limit,
        }


def _check_model(served: Served, model: str | None) -> None:
    if model is not None and model != served.name:
        raise ApiError(404, f"model {model!r} is not served here (this server serves {served.name!r})", param="model")


def _check_common(served: Served, fields: GenerationFields) -> int:
    """The checks every request gets; returns ``max_tokens``."""
    _check_model(served, fields.model)
    limit = served.config.serve.max_tokens_limit
    asked = fields.max_tokens if fields.max_tokens is not None else fields.max_completion_tokens
    if asked is not None and asked > limit:
        raise ApiError(400, f"max_tokens {asked} is over this server's limit of {limit}", param="max_tokens")
    try:  # the same policy as sample, chat and debate
        refuse_unconditioned(served.conditions, fields.conditions, fields.guidance or 0.0)
    except UserError as exc:
        raise _refused(exc) from None
    return asked if asked is not None else min(served.config.sample.max_new_tokens, limit)


def _refused(exc: UserError) -> ApiError:
    """A user error of the shared sampling code as a 400 naming the request field (its key's last part)."""
    return ApiError(400, exc.message, param=(exc.key or "").rpartition(".")[2] or None)


def _check_fits(served: Served, ids: list[int], param: str, echo: bool = False) -> None:
    """A prompt must fit the context, except under ``echo``: scoring reads any length in windows."""
    if len(ids) > served.model.context_length and not echo:
        raise ApiError(
            400, f"{param} is {len(ids)} tokens; the model's context is {served.model.context_length}", param=param
        )


def _check_vocab(served: Served, ids: list[int], param: str) -> None:
    vocab = served.model.tokenizer.vocab_size
    outside = [i for i in ids if not 0 <= i < vocab]
    if outside:
        message = f"{param} holds token id {outside[0]}, outside the vocabulary (0 to {vocab - 1})"
        raise ApiError(400, message, param=param)


def _encode(served: Served, text: str, param: str, echo: bool = False) -> list[int]:
    try:
        ids = served.model.tokenizer.encode(text)
    except UserError as exc:
        raise ApiError(400, f"{param} cannot be encoded: {exc.message}", param=param) from None
    if not ids:
        raise ApiError(400, f"{param} is empty after tokenization; give at least one token", param=param)
    _check_fits(served, ids, param, echo)
    return ids


def guidance(sc: SampleConfig, fields: GenerationFields) -> float:
    """The request's party guidance weight, or the experiment's ``sample.guidance``."""
    return sc.guidance if fields.guidance is None else fields.guidance


def request_params(
    sc: SampleConfig,
    fields: GenerationFields,
    max_tokens: int,
    keep_prefix: int = 0,
    contrast: tuple[ContrastPrompt, ...] = (),
) -> SamplingParams:
    """What a request samples with: each setting it gives, the experiment's ``[sample]`` value for each it leaves
    out (a fresh random seed where neither gives one)."""
    return SamplingParams(
        guidance=guidance(sc, fields),
        contrast=contrast,
        max_new_tokens=max_tokens,
        temperature=sc.temperature if fields.temperature is None else fields.temperature,
        top_k=sc.top_k if fields.top_k is None else fields.top_k,
        top_p=sc.top_p if fields.top_p is None else fields.top_p,
        repetition_penalty=sc.repetition_penalty if fields.repetition_penalty is None else fields.repetition_penalty,
        seed=secrets.randbits(31) if fields.seed is None else fields.seed,
        use_kv_cache=sc.use_kv_cache,
        keep_prefix=keep_prefix,
    )


def _check_ids(served: Served, ids: list[int], param: str, echo: bool = False) -> list[int]:
    _check_vocab(served, ids, param)
    _check_fits(served, ids, param, echo)
    return ids


def completion_request(
    served: Served, body: CompletionRequest, prompt: str | list[int] | None = None
) -> GenerationRequest:
    """The generation for one prompt of the request (``prompt``: one of ``body.prompts``; None: the first)."""
    max_tokens = _check_common(served, body)
    if isinstance(prompt, list):
        params = request_params(served.config.sample, body, max(max_tokens, 1))
        return GenerationRequest(_check_ids(served, prompt, "prompt", body.echo), params, tuple(body.stop_strings))
    text = prompt if prompt is not None else body.prompt_text
    text = served.config.sample.prompt if text is None else text
    keep_prefix = 0
    contrast: tuple[ContrastPrompt, ...] = ()
    if served.conditions is not None:
        try:
            header, keep_prefix = header_in_view(served.model.tokenizer, body.conditions, served.conditions)
        except UserError as exc:
            raise _refused(exc) from None
        if guidance(served.config.sample, body) > 0:
            parties = list(served.conditions.get("parties", {}))
            contrast = party_contrast(served.model.tokenizer, body.conditions, parties, text.strip())
        text = header + text.strip()
    ids = _encode(served, text, "prompt", body.echo)
    params = request_params(served.config.sample, body, max(max_tokens, 1), keep_prefix, contrast)
    return GenerationRequest(ids, params, tuple(body.stop_strings))


def chat_request(served: Served, body: ChatRequest) -> GenerationRequest:
    max_tokens = _check_common(served, body)
    if served.model.chat_ids is None:
        raise ApiError(
            400, f"{served.name} has no chat template; use /v1/completions for a continuation", param="messages"
        )
    ids = served.model.chat_ids([{"role": m.role, "content": m.text} for m in body.messages])
    if len(ids) > served.model.context_length:
        raise ApiError(
            400,
            f"messages are {len(ids)} tokens; the model's context is {served.model.context_length}",
            param="messages",
        )
    return GenerationRequest(ids, request_params(served.config.sample, body, max_tokens), tuple(body.stop_strings))


class LoopWaker:
    """Wakes the event loop once for every job the engine's thread delivered to since the loop last woke.

    ``call_soon_threadsafe`` writes to the loop's self-pipe, a system call on the decoding thread each
    time: once per stream per step, it took 6.5% of that thread's samples with 8 clients of the GPT
    bench model. A batch step delivers to every stream within microseconds, so most of its streams find
    a wake-up already on its way and join it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.due: list[asyncio.Event] = []
        self.signalled = False
        self.wakeups = 0  # wake-ups sent; fewer than the events set when deliveries came together

    def wake(self, ready: asyncio.Event) -> None:
        """On any thread: ``ready.set()`` on the loop, sharing a wake-up already on its way."""
        with self.lock:
            self.due.append(ready)
            if self.signalled:
                return
            self.signalled = True
            self.wakeups += 1
        try:
            self.loop.call_soon_threadsafe(self._fire)
        except RuntimeError:  # the loop is closed: nothing will take these
            with self.lock:
                self.due.clear()
                self.signalled = False
            raise

    def _fire(self) -> None:
        with self.lock:
            due, self.due = self.due, []
            self.signalled = False
        for ready in due:
            ready.set()


_WAKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWaker] = weakref.WeakKeyDictionary()


def loop_waker(loop: asyncio.AbstractEventLoop) -> LoopWaker:
    """The one waker of ``loop`` (made on its thread, at the first job)."""
    waker = _WAKERS.get(loop)
    if waker is None:
        waker = _WAKERS[loop] = LoopWaker(loop)
    return waker


class JobEvents:
    """A submitted job's events on the event loop (the engine delivers them from its thread)."""

    def __init__(self, engine: Engine, request: GenerationRequest, metrics: ServerMetrics | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.waker = loop_waker(self.loop)
        self.ready = asyncio.Event()
        self.pending: list[Event] = []  # delivered by the engine's thread, not yet taken by the event loop
        self.lock = threading.Lock()
        self.signalled = False  # a wake-up is on its way to the event loop
        self.metrics = metrics
        self.started = time.monotonic()
        self.first = True
        if metrics is not None:
            metrics.prompt_tokens.inc(len(request.prompt_ids))
        try:
            self.job: Job = engine.submit(request, self._deliver)
        except EngineBusyError as exc:
            raise ApiError(503, f"server busy: {exc.message}; try again", kind="server_busy") from None
        except EngineClosedError as exc:
            raise ApiError(503, exc.message, kind="server_shutting_down") from None

    def _deliver(self, event: Event) -> None:
        """On the engine's thread: one wake-up of the event loop for all it has not taken yet."""
        if self.metrics is not None:
            if isinstance(event, Delta) and self.first:
                self.first = False
                self.metrics.time_to_first_token.observe(time.monotonic() - self.started)
            elif isinstance(event, Done):
                self.metrics.generated_tokens.inc(event.completion_tokens)
        with self.lock:
            self.pending.append(event)
            if self.signalled:
                return
            self.signalled = True
        try:
            self.waker.wake(self.ready)
        except RuntimeError:  # the event loop is gone: the server stopped
            self.job.cancel()

    async def _take(self, timeout: float | None = None) -> list[Event]:
        """What was delivered since the last call, the text of successive deltas joined into one (a client that
        reads slower than the model writes gets fewer, longer chunks); [] when ``timeout`` passes first."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            return []
        self.ready.clear()
        with self.lock:
            events, self.pending = self.pending, []
            self.signalled = False
        joined: list[Event] = []
        for event in events:
            if joined and isinstance(event, Delta) and isinstance(joined[-1], Delta):
                joined[-1] = Delta(joined[-1].text + event.text)
            else:
                joined.append(event)
        return joined

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            while True:
                for event in await self._take():
                    yield event
                    if not isinstance(event, Delta):
                        return
        finally:
            self.job.cancel()

    async def collect(self, request: Request) -> tuple[str, Done]:
        """The whole text, or ``ApiError`` when generation failed; the job is cancelled if the client leaves."""
        parts: list[str] = []
        try:
            while True:
                events = await self._take(DISCONNECT_POLL_S)
                if not events and await request.is_disconnected():
                    raise ApiError(499, "client closed the request") from None
                for event in events:
                    if isinstance(event, Delta):
                        parts.append(event.text)
                    elif isinstance(event, Done):
                        return "".join(parts), event
                    else:
                        raise ApiError(event.status, event.message, kind="server_busy" if event.status == 503 else None)
        finally:
            self.job.cancel()


def _usage(done: Done) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _sse(payload: Mapping[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _completion_stream(served: Served, events: JobEvents, include_usage: bool, chat: bool) -> AsyncIterator[str]:
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    base = {
        "id": ident,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": served.name,
    }

    def choice(text: str | None, finish: str | None) -> dict[str, Any]:
        if chat:
            delta: dict[str, str] = {} if text is None else {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    if chat:
        yield _sse(
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        )
    async for event in events:
        if isinstance(event, Delta):
            yield _sse({**base, "choices": [choice(event.text, None)]})
        elif isinstance(event, Done):
            yield _sse({**base, "choices": [choice(None, event.finish_reason)]})
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(event)})
        else:
            yield _sse({"error": {"message": event.message, "type": "server_error", "param": None, "code": None}})
    yield _sse("[DONE]")


def _token_text(served: Served, token: int) -> str:
    return served.model.tokenizer.decode([token])


def legacy_logprobs(served: Served, scores: TokenScores, first: int, offset: int) -> dict[str, Any]:
    """OpenAI's completions shape for the tokens from ``first`` on; ``offset``: where the first one's text starts."""
    tokens = [_token_text(served, token) for token in scores.ids[first:]]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    tops = [
        None if top is None else {_token_text(served, token): value for token, value in top}
        for top in scores.top[first:]
    ]
    return {
        "tokens": tokens,
        "token_logprobs": scores.logprobs[first:],
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprobs(served: Served, scores: TokenScores, first: int) -> dict[str, Any]:
    """OpenAI's chat shape for the completion's tokens (from ``first`` on)."""

    def entry(token: int, value: float) -> dict[str, Any]:
        text = _token_text(served, token)
        return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

    content = []
    for token, value, top in zip(scores.ids[first:], scores.logprobs[first:], scores.top[first:], strict=True):
        assert value is not None  # a completion token always has one: the prompt precedes it
        content.append({**entry(token, value), "top_logprobs": [entry(t, v) for t, v in top or []]})
    return {"content": content}


async def _score(served: Served, ids: list[int], top: int) -> TokenScores:
    """Log-probabilities of ``ids`` (a prompt, with its completion when there is one), in the context's windows."""
    try:
        future = served.engine.call(lambda: score_tokens(served.model, ids, top))
    except EngineClosedError as exc:
        raise ApiError(503, exc.message, kind="server_shutting_down") from None
    return await asyncio.wrap_future(future)


def _in_view(served: Served, generation: GenerationRequest) -> GenerationRequest:
    """An echoed prompt longer than the context continues from its last tokens, leaving room for the answer
    (lm-evaluation-harness asks one token past the windows it scores, and reads none of it). A prompt that
    fits is left whole (the family slides its window if the answer outgrows the context)."""
    context, wanted = served.model.context_length, generation.params.max_new_tokens
    if len(generation.prompt_ids) <= context:
        return generation
    if wanted >= context:
        message = f"max_tokens {wanted} leaves no room for the prompt in the model's context of {context}"
        raise ApiError(400, message, param="max_tokens")
    return replace(generation, prompt_ids=generation.prompt_ids[len(generation.prompt_ids) - context + wanted :])


async def _choice(
    served: Served, body: CompletionRequest, index: int, prompt: Prompt | None, request: Request
) -> tuple[dict[str, Any], int, int]:
    """One prompt's choice in the completions shape, with (prompt tokens, completion tokens)."""
    generation = completion_request(served, body, prompt)
    prompt_ids = generation.prompt_ids
    prompt_text = served.model.tokenizer.decode(prompt_ids)
    text, completion_ids, finish = "", [], "length"
    if body.max_tokens != 0:
        generation = _in_view(served, generation)
        text, done = await JobEvents(served.engine, generation, served.metrics).collect(request)
        completion_ids, finish = list(done.token_ids), done.finish_reason
    logprobs = None
    if body.logprobs is not None:
        context = served.model.context_length
        if len(prompt_ids) <= context < len(prompt_ids) + len(completion_ids):  # sampled from a sliding window
            raise ApiError(
                400,
                f"prompt and completion are {len(prompt_ids) + len(completion_ids)} tokens, more than the model's "
                f"context of {context} that scoring them as they were sampled needs; ask for fewer max_tokens",
                param="max_tokens",
            )
        scores = await _score(served, prompt_ids + completion_ids, body.logprobs)
        first, offset = (0, 0) if body.echo else (len(prompt_ids), len(prompt_text))
        logprobs = legacy_logprobs(served, scores, first, offset)
    choice = {
        "index": index,
        "text": (prompt_text if body.echo else "") + text,
        "logprobs": logprobs,
        "finish_reason": finish,
    }
    return choice, len(prompt_ids), len(completion_ids)


async def scored_completions(served: Served, body: CompletionRequest, request: Request) -> JSONResponse:
    """Several prompts, echo, logprobs: every prompt's choice, decoded side by side in the engine."""
    given = body.prompts
    prompts: list[Prompt | None] = [None] if given is None else list(given)
    results = await asyncio.gather(*(_choice(served, body, i, p, request) for i, p in enumerate(prompts)))
    prompt_tokens = sum(r[1] for r in results)
    completion_tokens = sum(r[2] for r in results)
    return JSONResponse(
        {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": served.name,
            "choices": [r[0] for r in results],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def _page() -> str:
    return resources.files("ml_playground.serving").joinpath("static", "index.html").read_text("utf-8")


def create_app(served: Served) -> FastAPI:
    app = FastAPI(title=f"ml_playground: {served.name}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        location = [str(part) for part in first.get("loc", ())]
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON")
        param = ".".join(location[1:]) if location[:1] == ["body"] else ".".join(location)
        return error_response(400, f"{param or 'body'}: {first.get('msg', 'invalid')}", param or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        traceback.print_exception(exc, file=sys.stderr)
        return error_response(500, f"internal error ({type(exc).__name__}); see the server's log")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(served.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        active, waiting = served.engine.load()
        return {"status": "ok", "model": served.name, "active": active, "waiting": waiting}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [served.describe()]}

    async def respond(
        body: GenerationFields, generation: GenerationRequest, request: Request, *, chat: bool
    ) -> Response:
        """One path for both endpoints: a stream of chunks, or the whole answer in OpenAI's shape."""
        events = JobEvents(served.engine, generation, served.metrics)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            stream = _completion_stream(served, events, include_usage, chat=chat)
            return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
        text, done = await events.collect(request)
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": done.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
            if isinstance(body, ChatRequest) and body.logprobs:
                ids = [*generation.prompt_ids, *done.token_ids]
                scores = await _score(served, ids, body.top_logprobs or 0)
                choice["logprobs"] = chat_logprobs(served, scores, len(generation.prompt_ids))
        else:
            choice["text"] = text
        return JSONResponse(
            {
                "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": served.name,
                "choices": [choice],
                "usage": _usage(done),
            }
        )

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        if not body.is_plain:
            return await scored_completions(served, body, request)
        return await respond(body, completion_request(served, body), request, chat=False)

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        """What a client needs to tokenize as the model does (lm-evaluation-harness's remote tokenizer)."""
        tokenizer = served.model.tokenizer
        eos = tokenizer.eos_token_id
        return {
            "eos_token": tokenizer.decode([eos]) if eos is not None else None,
            "bos_token": None,
            "pad_token": None,
            "chat_template": tokenizer.chat_template if served.model.chat_ids is not None else None,
            "model_max_length": served.model.context_length,
        }

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        _check_model(served, body.model)
        if body.add_special_tokens:
            raise ApiError(400, "add_special_tokens: only false; ids of the text alone", param="add_special_tokens")
        try:
            ids = served.model.tokenizer.encode(body.prompt)
        except UserError as exc:
            raise ApiError(400, f"prompt cannot be encoded: {exc.message}", param="prompt") from None
        return {"tokens": ids, "count": len(ids), "max_model_len": served.model.context_length}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        _check_model(served, body.model)
        _check_vocab(served, body.tokens, "tokens")
        return {"prompt": served.model.tokenizer.decode(body.tokens)}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        return await respond(body, chat_request(served, body), request, chat=True)

    return BodyLimit(Guard(app, served), served.config.serve.max_body_bytes, served.metrics)  # type: ignore[return-value]


OPEN_PATHS = frozenset({"/health", "/"})
DRAIN_LIMIT_FACTOR = 16
KNOWN_PATHS = frozenset(
    {
        "/",
        "/health",
        "/metrics",
        "/v1/models",
        "/v1/completions",
        "/v1/chat/completions",
        "/tokenize",
        "/detokenize",
        "/tokenizer_info",
    }
)


def endpoint_label(path: str) -> str:
    """The metrics' label for a request's path: the path where the server knows it, else "other"."""
    return path if path in KNOWN_PATHS else "other"


class Guard:
    """The API key (all but /health and the page), then each request's status counted by endpoint.

    Plain ASGI around the app, so a streamed answer's chunks pass straight through. As a Starlette
    ``@app.middleware("http")`` it sent each chunk through a stream of its own, with a task switch on the
    event loop's thread, which holds the interpreter lock the decoding thread needs: with 8 clients of
    the GPT bench model the web thread was busy for a fifth of its samples, and the decoding thread
    spent 11% of its time waiting for the lock after waking it."""

    def __init__(self, app: Any, served: Served) -> None:
        self.app = app
        self.served = served

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        requests = self.served.metrics.requests
        endpoint = endpoint_label(path)  # never the raw path: a client must not be able to mint label values
        key = self.served.api_key
        if key is not None and path not in OPEN_PATHS:
            sent = next((value for name, value in scope.get("headers", []) if name == b"authorization"), b"")
            if not secrets.compare_digest(sent, f"Bearer {key}".encode()):
                message = "missing or wrong API key: send it as 'Authorization: Bearer KEY'"
                requests.labels(endpoint, "401").inc()
                await error_response(401, message, kind="authentication_error")(scope, receive, send)
                return

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


class BodyLimit:
    """Reads a request's body before the app does and answers 413 when it is over ``limit`` bytes.

    Content-Length is checked first; a chunked body is counted as it arrives. Either way the app
    never sees a body over the limit, and the client gets OpenAI's JSON error.
    """

    def __init__(self, app: Any, limit: int, metrics: ServerMetrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send, more_body=True)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(scope, receive, send, more_body=message.get("more_body", False))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Any, receive: Any, send: Any, *, more_body: bool) -> None:
        """``more_body``: whether the client is still sending; what it sends is read and dropped (up to a bound),
        so that it reads the answer cleanly."""
        left = DRAIN_LIMIT_FACTOR * self.limit
        message: dict[str, Any] = {"more_body": more_body}
        while message.get("more_body", False) and left > 0:
            message = await receive()
            if message["type"] != "http.request":
                break
            left -= len(message.get("body", b""))
        path = scope.get("path", "")
        self.metrics.requests.labels(endpoint_label(path), "413").inc()
        response = error_response(413, f"the request body is over this server's limit of {self.limit:,} bytes")
        await response(scope, receive, send)
