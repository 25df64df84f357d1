"""``prepare.template``: the text before each record, such as ``"{speaker} ({party}):\n"``, from the
record's fields (checked against the fields the records have). What a record then becomes (header,
text, EOS, loss mask, index row) is the encoder's and the records layout's business.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from ml_playground.core.errors import ConfigError


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
