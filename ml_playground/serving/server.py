"""``ml_playground serve``: the experiment's model behind the HTTP API, on uvicorn.

Uvicorn (with FastAPI on Starlette) because it is the ASGI server most Python model servers run on,
streams server-sent events without a thread per client, and shuts down gracefully: on SIGINT/SIGTERM
it stops listening and lets in-flight requests finish. Here new requests get a 503 meanwhile, and
streams still running when ``serve.shutdown_grace_s`` is over are ended cleanly (a last chunk, then
``[DONE]``) before the process exits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

from ml_playground.configuration.models import ExperimentConfig
from ml_playground.sampling.conditioning import model_conditions
from ml_playground.sampling.runner import load_model
from ml_playground.serving.app import Served, create_app
from ml_playground.serving.engine import Engine


class GracefulServer(uvicorn.Server):
    """Uvicorn's server, telling the engine when a shutdown starts and printing where it listens."""

    def __init__(self, config: uvicorn.Config, served: Served, announce: Callable[[str], None]) -> None:
        super().__init__(config)
        self.served = served
        self.announce = announce
        self._grace_timer: threading.Timer | None = None

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

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        engine = self.served.engine
        engine.close()
        if self._grace_timer is None:
            grace = max(0.0, self.served.config.serve.shutdown_grace_s - 0.5)
            self._grace_timer = threading.Timer(grace, engine.finish_all)
            self._grace_timer.daemon = True
            self._grace_timer.start()
        super().handle_exit(sig, frame)


def build_served(config: ExperimentConfig, name: str, checkpoint: str | None = None) -> Served:
    model = load_model(config, checkpoint or config.serve.checkpoint)
    engine = Engine(model, config.serve.max_concurrent, config.serve.queue_size)
    return Served(name, config, model, engine, model_conditions(model, config.prepare.dataset_dir))


def serve(
    config: ExperimentConfig,
    name: str,
    *,
    announce: Callable[[str], None],
    host: str | None = None,
    port: int | None = None,
    checkpoint: str | None = None,
) -> None:
    served = build_served(config, name, checkpoint)
    uv_config = uvicorn.Config(
        create_app(served),
        host=host or config.serve.host,
        port=config.serve.port if port is None else port,
        log_level="warning",
        timeout_graceful_shutdown=int(config.serve.shutdown_grace_s) + 1,
    )
    server = GracefulServer(uv_config, served, announce)
    try:
        server.run()
    finally:
        served.engine.stop()
