from __future__ import annotations

import pytest

from ml_playground.configuration.models import SampleConfig
from ml_playground.export.ollama import CHATML, modelfile, ollama_template

pytestmark = pytest.mark.unit

QWEN_LIKE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
LLAMA3_LIKE = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{% endfor %}"


def test_chatml_is_translated_and_other_templates_are_left_to_ollama() -> None:
    assert ollama_template(None) == "{{ .Prompt }}"  # a model without a template continues raw text
    assert ollama_template(QWEN_LIKE) == CHATML
    assert ollama_template(LLAMA3_LIKE) is None  # Ollama reads tokenizer.chat_template from the GGUF itself


def test_a_modelfile_without_a_template_line_still_stops_and_samples() -> None:
    text = modelfile("m.gguf", SampleConfig(top_p=0.9), ["<|eot_id|>"], 2048, template=None)
    assert "TEMPLATE" not in text
    assert text.splitlines()[0] == "FROM ./m.gguf"
    assert 'PARAMETER stop "<|eot_id|>"' in text
    assert "PARAMETER top_p 0.9" in text
    assert "PARAMETER repeat_penalty 1.0" in text  # ours, not Ollama's default of 1.1
    assert "PARAMETER repeat_last_n -1" in text
    assert "PARAMETER repeat_penalty 1.2" in modelfile("m.gguf", SampleConfig(repetition_penalty=1.2), [], 2048)
    chat = modelfile("m.gguf", SampleConfig(), ["<|im_end|>"], 2048, template=CHATML)
    assert f'TEMPLATE """{CHATML}"""' in chat
