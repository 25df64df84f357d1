"""``compare``: the same text under several experiments' models, in bits per byte (tokenizer-independent)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.atomic import atomic_write_text, atomic_write_with
from ml_playground.evaluation.runner import EvalReport, evaluate_checkpoint

CHART_FILE = "bits_per_byte.png"
TABLE_FILE = "compare.json"


@dataclass(frozen=True)
class CompareRow:
    experiment: str
    bits_per_byte: float | None
    loss_per_token: float
    tokens: int
    bytes: int
    characters_per_token: float
    seconds: float
    checkpoint: str
    step: int

    @classmethod
    def of(cls, experiment: str, report: EvalReport) -> CompareRow:
        return cls(
            experiment,
            report.bits_per_byte,
            report.val_loss,
            report.tokens,
            report.bytes,
            report.characters / max(1, report.text_tokens),
            report.seconds,
            report.checkpoint,
            report.step,
        )


def compare_models(
    experiments: Sequence[tuple[str, ExperimentConfig]],
    data: Path,
    out_dir: Path,
    *,
    max_tokens: int | None = None,
    emit: Callable[[str], None] = print,
) -> list[CompareRow]:
    """Score ``data`` with each experiment's checkpoint (``sample.checkpoint``); write the table and a chart."""
    rows = []
    for name, config in experiments:
        rows.append(CompareRow.of(name, evaluate_checkpoint(config, data, max_tokens)))
        emit(f"{name}: {rows[-1].bits_per_byte:.4f} bits/byte\n" if rows[-1].bits_per_byte else f"{name}: done\n")
    payload = {"data": str(data), "rows": [asdict(row) for row in rows]}
    atomic_write_text(out_dir / TABLE_FILE, json.dumps(payload, indent=2, ensure_ascii=False))
    atomic_write_with(out_dir / CHART_FILE, lambda path: _chart(rows, data, path))
    return rows


def _chart(rows: Sequence[CompareRow], data: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(5.0, 1.6 * len(rows)), 4))
    axis.bar([row.experiment for row in rows], [row.bits_per_byte or 0.0 for row in rows], color="#1f77b4")
    axis.set_ylabel("bits per byte (lower is better)")
    axis.set_title(f"The same text under each model: {data.name}")
    plt.setp(axis.get_xticklabels(), rotation=20, ha="right")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
