"""What an export refuses before it writes anything: options the target formats cannot express."""

from __future__ import annotations

import pytest

from ml_playground.export.request import ExportError
from ml_playground.families.gpt.gguf import check_gguf_exportable
from ml_playground.families.gpt.hf import check_exportable
from ml_playground.families.gpt.model import GPTConfig

pytestmark = pytest.mark.unit


def test_a_condition_embedding_is_refused_by_both_formats_in_one_line() -> None:
    config = GPTConfig(vocab_size=50, condition_marker=3, condition_reset=4)
    with pytest.raises(ExportError, match=r"train\.model\.condition_embedding .*has no counterpart"):
        check_exportable(config)
    with pytest.raises(ExportError, match=r"train\.model\.condition_embedding cannot be expressed in GGUF"):
        check_gguf_exportable(config)
    check_exportable(GPTConfig(vocab_size=50))
    check_gguf_exportable(GPTConfig(vocab_size=50))
