"""The serve bench's HTTP client: one streamed completion, run in a process of its own.

Kept apart from the bench (no PyTorch here), so that starting a client process is cheap.
"""

from __future__ import annotations

import json
import time


def stream(url: str, tokens: int, seed: int, first: list[float] | None = None, prompt: str = "ROMEO:") -> int:
    """Stream one completion; its tokens, and (into ``first``) the seconds to its first text."""
    import httpx

    started = time.perf_counter()
    body: dict[str, object] = {
        "prompt": prompt,
        "max_tokens": tokens,
        "seed": seed,
        "temperature": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    lines: list[str] = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                if not lines and first is not None:
                    first.append(time.perf_counter() - started)
                lines.append(line)
    return int(json.loads(lines[-1][len("data: ") :])["usage"]["completion_tokens"])


def client(url: str, tokens: int, seed: int, prompt: str = "ROMEO:") -> tuple[int, float]:
    """One client: (tokens received, seconds to its first text)."""
    first: list[float] = []
    count = stream(url, tokens, seed, first, prompt)
    return count, first[0]


def ready(_: int) -> int:
    """Nothing: a client process that has run it has started (and imported only this module)."""
    return 0
