from __future__ import annotations

import pytest

from ml_playground.core.errors import ConfigError
from ml_playground.core.hub import load_pretrained_tokenizer

pytestmark = pytest.mark.unit


def test_a_hub_id_that_is_not_cached_offline_says_where_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as caught:
        load_pretrained_tokenizer("nobody/nothing", key="prepare.hf_tokenizer")
    message = str(caught.value)
    assert message.startswith("prepare.hf_tokenizer: cannot load the tokenizer of 'nobody/nothing'")
    assert "not in the Hugging Face cache (" in message
    assert "downloads are off (HF_HUB_OFFLINE=1)" in message
    assert "\n" not in message
