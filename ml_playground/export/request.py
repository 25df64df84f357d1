"""What ``export`` is asked for and what it wrote (shared by the runner and the model families)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ml_playground.core.atomic import replace_dir
from ml_playground.core.errors import UserError

ExportFormat = Literal["hf", "gguf", "ollama"]
GgufType = Literal["f32", "f16", "q8_0"]


class ExportError(UserError):
    """The checkpoint cannot be expressed in the requested format."""


@dataclass(frozen=True)
class ExportRequest:
    format: ExportFormat
    out_dir: Path
    checkpoint: str
    force: bool = False
    name: str = "model"
    gguf_type: GgufType = "f16"


@dataclass
class ExportResult:
    out_dir: Path
    files: list[str]
    step: int
    notes: list[str] = field(default_factory=list)


def refuse_to_overwrite(request: ExportRequest) -> None:
    """Before any work: a folder that exists and is not empty is replaced only with ``--force``."""
    target = request.out_dir
    if target.exists() and any(target.iterdir()) and not request.force:
        raise UserError("exists and is not empty; use --force to replace it", path=target)


def write_export(request: ExportRequest, write: Callable[[Path], None], step: int) -> ExportResult:
    """``write(tmp)`` fills a folder beside the target, which is swapped in whole or not at all."""
    target = request.out_dir
    try:
        replace_dir(target, write)
    except OSError as exc:
        raise UserError(f"export failed, nothing written ({exc.strerror or exc})", path=target) from None
    return ExportResult(target, sorted(p.name for p in target.iterdir()), step)
