"""Records -> one token stream plus a loss mask and a record index, for tokenizers with an end-of-sequence token.

Each record becomes a header (a ``template`` such as ``"{speaker} ({party}):\\n"``, or a conditioning
header) + its text + EOS. The mask says which tokens are targets of the loss: everything, or
everything but the header when ``mask_header`` is set. The index row of a record is (first token,
header tokens, all tokens): the record-aware windows of ``batches.py`` start every window at a
record's header and repeat it before each chunk of a long record, for every family alike.
The EOS token is always a target, whatever the tokenizer's pad token is
(Qwen's pad token *is* its EOS token; a pipeline that masks padding by id would silently mask EOS
too, and the model would never learn to stop).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ml_playground.core.errors import ConfigError, DataError
from ml_playground.core.tokenizer_protocol import Tokenizer


@dataclass(frozen=True)
class PackedTokens:
    ids: npt.NDArray[np.int64]
    mask: npt.NDArray[np.uint8]  # 1 where the token is a target of the loss
    index: npt.NDArray[np.int64]  # (records, 3): first token, header tokens, all tokens


def template_fields(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def render_header(template: str, record: Mapping[str, Any]) -> str:
    values = {field: "" if record.get(field) is None else str(record.get(field)) for field in template_fields(template)}
    return template.format_map(values)


def check_template(template: str, available: Sequence[str]) -> None:
    try:
        fields = template_fields(template)
    except ValueError as exc:
        raise ConfigError(f"not a valid template ({exc})", key="prepare.template") from None
    unknown = [field for field in fields if field not in available]
    if unknown:
        raise ConfigError(
            f"unknown field(s) {', '.join(unknown)}; records have {', '.join(sorted(available))}",
            key="prepare.template",
        )


ENCODE_BATCH = 256  # records encoded together: parallel in the tokenizer, bounded in memory


def pack_records(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    eos_id: int,
    *,
    header: Callable[[int, Mapping[str, Any]], str] | None = None,
    mask_header: bool = False,
) -> PackedTokens:
    """``header(position, record)``: the text before the record's own (none when ``header`` is None)."""
    ids: list[npt.NDArray[np.int64]] = []
    mask: list[npt.NDArray[np.uint8]] = []
    rows: list[tuple[int, int, int]] = []
    at = 0
    for first in range(0, len(records), ENCODE_BATCH):
        part = records[first : first + ENCODE_BATCH]
        heads = [header(first + offset, record) if header else "" for offset, record in enumerate(part)]
        encoded = tokenizer.encode_batch(heads + [str(record["text"]) for record in part])
        for head, body in zip(encoded[: len(part)], encoded[len(part) :], strict=True):
            length = len(head) + len(body) + 1
            rows.append((at, len(head), length))
            ids.append(np.asarray([*head, *body, eos_id], dtype=np.int64))
            record_mask = np.ones(length, dtype=np.uint8)
            if mask_header:
                record_mask[: len(head)] = 0
            mask.append(record_mask)
            at += length
    if not ids:
        raise DataError("no records to pack")
    return PackedTokens(np.concatenate(ids), np.concatenate(mask), np.asarray(rows, dtype=np.int64))


def template_header(template: str) -> Callable[[int, Mapping[str, Any]], str]:
    return lambda _position, record: render_header(template, record)
