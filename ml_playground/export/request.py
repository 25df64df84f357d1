"""What ``export`` is asked for and what it wrote (shared by the runner and the model families)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ExportFormat = Literal["hf", "gguf", "ollama"]
GgufType = Literal["f32", "f16", "q8_0"]


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
