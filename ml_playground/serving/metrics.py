"""Prometheus metrics at ``/metrics`` (``prometheus-client``): what an operator watches on a shared server.

Requests by endpoint and status, tokens in and out, how many streams are being decoded (the batch)
and how many wait, and the time to the first token. Each server has its own registry, so several
servers in one process (the tests) do not share counters.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    def __init__(self, load: Callable[[], tuple[int, int]]) -> None:
        """``load``: (streams being decoded, requests waiting), read at each scrape."""
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ml_playground_requests",
            "HTTP requests by endpoint and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter("ml_playground_prompt_tokens", "Prompt tokens received.", registry=self.registry)
        self.generated_tokens = Counter("ml_playground_generated_tokens", "Tokens generated.", registry=self.registry)
        self.time_to_first_token = Histogram(
            "ml_playground_time_to_first_token_seconds",
            "From a generation request's arrival to its first text.",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        active = Gauge("ml_playground_active_streams", "Streams being decoded (the batch).", registry=self.registry)
        waiting = Gauge("ml_playground_queue_depth", "Requests waiting for a slot.", registry=self.registry)
        active.set_function(lambda: load()[0])
        waiting.set_function(lambda: load()[1])

    def render(self) -> bytes:
        return generate_latest(self.registry)
