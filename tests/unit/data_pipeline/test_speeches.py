from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.speeches import iter_speeches, read_conditions

pytestmark = pytest.mark.unit


def test_speeches_table_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="speeches table not found"):
        list(iter_speeches(tmp_path / "speeches.jsonl"))
    path = tmp_path / "speeches.jsonl"
    path.write_text('{"speaker": "A"}\n')
    with pytest.raises(DataError, match="line 1 lacks role, party, session, date, text, source_file"):
        list(iter_speeches(path))
    path.write_text("\n{oops\n")
    with pytest.raises(DataError, match="line 2 is not JSON"):
        list(iter_speeches(path))
    with pytest.raises(DataError, match=r"conditions\.json not found"):
        read_conditions(tmp_path)
