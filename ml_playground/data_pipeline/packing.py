"""Records -> one token stream plus a loss mask, for tokenizers with an end-of-sequence token.

Each record becomes ``template`` (a header such as ``"{speaker} ({party}):\\n"``) + its text + EOS.
The mask says which tokens are targets of the loss: everything, or everything but the header when
``mask_template`` is set. The EOS token is always a target, whatever the tokenizer's pad token is
(Qwen's pad token *is* its EOS token; a pipeline that masks padding by id would silently mask EOS
too, and the model would never learn to stop).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
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


def pack_records(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    eos_id: int,
    *,
    template: str | None = None,
    mask_template: bool = False,
) -> PackedTokens:
    ids: list[int] = []
    mask: list[int] = []
    for record in records:
        header = tokenizer.encode(render_header(template, record)) if template else []
        body = tokenizer.encode(str(record["text"]))
        ids.extend(header)
        mask.extend([0 if mask_template else 1] * len(header))
        ids.extend(body)
        ids.append(eos_id)
        mask.extend([1] * (len(body) + 1))
    if not ids:
        raise DataError("no records to pack")
    return PackedTokens(np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.uint8))
