"""What this machine is, as far as a measured figure or a cached measurement depends on it."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "neon", "asimd")


@functools.cache
def cpu_facts() -> tuple[str, list[str]]:
    """The CPU's model name and the vector instruction sets of ``ISA_FLAGS`` it has (Linux; elsewhere less)."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags.update(value.split())
    except OSError:  # pragma: no cover (not Linux)
        pass
    return model, [flag for flag in ISA_FLAGS if flag in flags]


def user_cache_dir() -> Path:
    """Where measurements about this machine are kept: ``$ML_PLAYGROUND_CACHE``, else the XDG cache folder."""
    if explicit := os.environ.get("ML_PLAYGROUND_CACHE"):
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ml_playground"
