"""Choices this machine answers by measuring once: timed at first use, then kept in the user's cache.

Which kernel or precision is faster depends on the CPU (an Intel Xeon with AMX multiplies bfloat16 in
hardware, a CPU without bfloat16 instructions emulates it), so such choices are measured where the code
runs, not set by hand on one machine. ``key`` names what the answer depends on (CPU, PyTorch, threads,
shape); a cache that cannot be read or written only means measuring again."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ml_playground.core.atomic import atomic_write_text
from ml_playground.core.machine import cpu_facts, user_cache_dir


def machine_key(*parts: str) -> str:
    """A cache key: this machine's CPU, PyTorch and threads, then the rest of what the answer depends on."""
    import torch  # here, not at the top: a plain-text prepare never imports PyTorch

    cpu, _ = cpu_facts()
    return " | ".join((cpu, f"torch {torch.__version__}", f"{torch.get_num_threads()} threads", *parts))


def cached_choice(
    file: str,
    key: str,
    choices: tuple[str, ...],
    measure: Callable[[], Mapping[str, float]],
    decide: Callable[[Mapping[str, float]], str],
    cache_dir: Path | None = None,
) -> str:
    """The cached answer for ``key`` in ``file``, or ``decide(measure())`` now (then cached with its timings)."""
    path = (cache_dir or user_cache_dir()) / file
    try:
        cached = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        cached = {}
    cached = cached if isinstance(cached, dict) else {}
    entry = cached.get(key)
    if isinstance(entry, dict) and entry.get("choice") in choices:
        return str(entry["choice"])
    seconds = dict(measure())
    chosen = decide(seconds)
    cached[key] = {"choice": chosen, "seconds": seconds, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cached, indent=1, sort_keys=True))
    except OSError:  # a read-only home: measured again next time, nothing else lost
        pass
    return chosen


def alternating_medians(runs: Mapping[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, after one warm-up each, timed in turns so that drift hits all alike."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}
