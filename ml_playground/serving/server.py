"""``ml_playground serve``: the experiment's model behind the HTTP API, on uvicorn.

Uvicorn (with FastAPI on Starlette) because it is the ASGI server most Python model servers run on,
streams server-sent events without a thread per client, and shuts down gracefully: on SIGINT/SIGTERM
it stops listening and lets in-flight requests finish. Here the server keeps listening first: new
requests get a 503 while in-flight streams finish, streams still running when
``serve.shutdown_grace_s`` is over are ended cleanly (a last chunk, then ``[DONE]``), and only then
does uvicorn stop.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from types import FrameType

import uvicorn

from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.errors import UserError
from ml_playground.sampling.conditioning import model_conditions
from ml_playground.sampling.runner import load_model
from ml_playground.serving.app import Served, create_app
from ml_playground.serving.engine import Engine

DRAIN_POLL_S = 0.05
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulServer(uvicorn.Server):
    """Uvicorn's server, telling the engine when a shutdown starts and printing where it listens."""

    def __init__(
        self,
        config: uvicorn.Config,
        served: Served,
        announce: Callable[[str], None],
        listening: Callable[[str], None] | None = None,
    ) -> None:
        """``listening``: told the base URL once the server listens (a parent process waiting for it)."""
        super().__init__(config)
        self.served = served
        self.announce = announce
        self.listening = listening
        self._drain: threading.Thread | None = None
        self.signals: list[int] = []  # the signals that stopped it

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets)  # type: ignore[arg-type]
        if self.should_exit:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        model = self.served.model
        self.announce(
            f"serving {self.served.name} (step {model.step}, {model.checkpoint}) on http://{host}:{port} "
            f"(OpenAI API under /v1, web page at /); Ctrl-C to stop"
        )
        if self.listening is not None:
            self.listening(f"http://{host}:{port}")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: keep listening and answer new requests with 503 while in-flight streams finish (at most
        ``serve.shutdown_grace_s``), then stop. A second signal stops at once."""
        self.signals.append(sig)
        engine = self.served.engine
        if self._drain is not None:
            engine.finish_all()
            super().handle_exit(sig, frame)
            return
        engine.close()
        grace = self.served.config.serve.shutdown_grace_s

        def drain() -> None:
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and engine.load() != (0, 0):
                time.sleep(DRAIN_POLL_S)
            engine.finish_all()
            time.sleep(DRAIN_POLL_S)  # the last chunks reach their clients
            uvicorn.Server.handle_exit(self, sig, frame)  # now uvicorn stops (and re-raises the signal at exit)

        self._drain = threading.Thread(target=drain, name="ml_playground-drain", daemon=True)
        self._drain.start()


def build_served(
    config: ExperimentConfig,
    name: str,
    checkpoint: str | None = None,
    api_key: str | None = None,
    *,
    engine_thread: bool = True,
) -> Served:
    """``api_key``: what the caller read from the environment; ``serve.api_key`` wins when both are set.
    ``engine_thread``: False when the caller decodes on its own thread (``run_served``)."""
    sc = config.serve
    model = load_model(config, checkpoint or sc.checkpoint)
    engine = Engine(model, sc.max_concurrent, sc.queue_size, sc.queue_timeout_s, own_thread=engine_thread)
    conditions = model_conditions(model, config.prepare.dataset_dir)
    return Served(name, config, model, engine, conditions, api_key=sc.api_key or api_key)


def serve(
    config: ExperimentConfig,
    name: str,
    *,
    announce: Callable[[str], None],
    host: str | None = None,
    port: int | None = None,
    checkpoint: str | None = None,
    api_key: str | None = None,
) -> None:
    served = build_served(config, name, checkpoint, api_key, engine_thread=False)
    uv_config = uvicorn.Config(
        create_app(served),
        host=host or config.serve.host,
        port=config.serve.port if port is None else port,
        log_level="warning",
        timeout_graceful_shutdown=int(config.serve.shutdown_grace_s) + 1,
    )
    run_served(served, uv_config, announce)


def run_served(
    served: Served,
    uv_config: uvicorn.Config,
    announce: Callable[[str], None],
    listening: Callable[[str], None] | None = None,
) -> None:
    """The web server on a thread of its own, the engine decoding on this one: the thread that loaded the model
    (``Engine.run`` says why). Called from the main thread, SIGINT and SIGTERM start the graceful shutdown, and
    the signal is raised again once everything stopped, as uvicorn does."""
    server = GracefulServer(uv_config, served, announce, listening)

    def web() -> None:
        try:
            server.run()
        finally:
            served.engine.stop()

    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in HANDLED_SIGNALS} if main else {}
    thread = threading.Thread(target=web, name="ml_playground-web", daemon=True)
    thread.start()
    try:
        served.engine.run()
    finally:
        server.should_exit = True
        thread.join()
        for handled, handler in previous.items():
            signal.signal(handled, handler)
    for caught in reversed(server.signals):
        signal.raise_signal(caught)


def _serve_built(build: Callable[[], Served], told: Connection) -> None:
    """The server process: what ``build`` makes, served on a free loopback port as ``serve`` serves it."""
    try:
        served = build()
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    uv_config = uvicorn.Config(create_app(served), host="127.0.0.1", port=0, log_level="warning")
    # run_served raises the stopping signal again at the end: here it ends the process normally, so its
    # finalizers run (a process killed by the signal leaves its semaphores to the resource tracker's warning)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_served(served, uv_config, announce=lambda _: None, listening=told.send)


@contextmanager
def serving_process(build: Callable[[], Served], start_timeout_s: float = 600.0) -> Iterator[str]:
    """``build()`` (a picklable callable: it runs in the new process) served in a process of its own, for a client
    in this one (the evaluation harness, the serve bench, tools); yields the base URL, and stops the server
    with SIGTERM on leaving. Not a thread of this process: a second thread decoding beside a first one that
    used PyTorch runs at a third of the speed (``Engine.run``)."""
    context = multiprocessing.get_context("spawn")
    listening, told = context.Pipe(duplex=False)  # a pipe, not a queue: nothing for the resource tracker
    child = context.Process(target=_serve_built, args=(build, told), name="ml_playground-serve", daemon=True)
    child.start()
    told.close()
    try:
        if not listening.poll(start_timeout_s):
            raise UserError(f"the server process did not listen within {start_timeout_s:g} s")
        try:
            url: str = listening.recv()
        except EOFError:  # it ended, closing its end of the pipe
            child.join()
            raise UserError(f"the server process ended before it listened (exit code {child.exitcode})") from None
        yield url
    finally:
        listening.close()
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGTERM)
        child.join(60)
        if child.is_alive():
            child.kill()
