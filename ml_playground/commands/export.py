"""``export``: a trained model as its family writes it (a Hugging Face folder, GGUF, GGUF + Ollama Modelfile).

Everything is written into a temporary folder beside the target and renamed into place at the end,
so a failure (disk full, permissions) leaves no partial export behind. A target folder that exists
and is not empty is replaced only with ``--force``. For ``ollama`` the runner then offers (and, where
an ``ollama`` binary exists, runs) ``ollama create``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from ml_playground.configuration.models import ExperimentConfig
from ml_playground.export.request import ExportFormat, ExportRequest, ExportResult
from ml_playground.families.registry import family_of

__all__ = ["ExportFormat", "ExportRequest", "ExportResult", "default_out_dir", "run_export"]


def default_out_dir(config: ExperimentConfig, fmt: str) -> Path:
    return config.export.out_dir or config.train.out_dir.parent / f"export-{fmt}"


def run_export(
    config: ExperimentConfig,
    request: ExportRequest,
    *,
    run: Callable[[list[str]], subprocess.CompletedProcess[str]] | None = None,
    which: Callable[[str], str | None] = shutil.which,
    write_hook: Callable[[Path], None] | None = None,
) -> ExportResult:
    """``run`` and ``which`` start and find ``ollama``; ``write_hook`` is called on the temporary folder before
    the swap (tests use it to fail mid-export)."""
    result = family_of(config).export(config, request, write_hook)
    if request.format == "ollama":
        command = ["ollama", "create", request.name, "-f", str(result.out_dir / "Modelfile")]
        result.notes.append("create the Ollama model with: " + shlex.join(command))
        if which("ollama") is not None:
            done = (run or _run)(command)
            result.notes.append(
                f"ollama create exited with {done.returncode}: {(done.stdout + done.stderr).strip()[:500]}"
            )
        else:
            result.notes.append("no `ollama` binary on PATH here, so it was not run")
    return result


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:  # pragma: no cover (no ollama on the CI machine)
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
