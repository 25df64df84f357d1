"""An Ollama ``Modelfile`` for an exported GGUF: template, stop tokens, sampling defaults from ``[sample]``."""

from __future__ import annotations

import json

from ml_playground.configuration.models import SampleConfig

CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


def ollama_template(chat_template: str | None) -> str | None:
    """Ollama's Go template for a model's Jinja chat template: ChatML (SmolLM2, Qwen) is translated;
    for another template None, and Ollama uses the ``tokenizer.chat_template`` inside the GGUF file."""
    if chat_template is None:
        return "{{ .Prompt }}"
    if "<|im_start|>" in chat_template and "<|im_end|>" in chat_template:
        return CHATML
    return None


def modelfile(
    gguf_name: str, sample: SampleConfig, stop: list[str], context_length: int, template: str | None = "{{ .Prompt }}"
) -> str:
    """``template``: Ollama's Go template (default: the raw prompt, for a model that continues text)."""
    lines = [
        f"FROM ./{gguf_name}",
        *([f'TEMPLATE """{template}"""'] if template is not None else []),
        f"PARAMETER num_ctx {context_length}",
        f"PARAMETER temperature {sample.temperature}",
        f"PARAMETER num_predict {sample.max_new_tokens}",
    ]
    if sample.top_k is not None:
        lines.append(f"PARAMETER top_k {sample.top_k}")
    if sample.top_p is not None:
        lines.append(f"PARAMETER top_p {sample.top_p}")
    # Ollama's own default is 1.1 over the last 64 tokens; ours is the sample section's over the whole answer
    lines += [f"PARAMETER repeat_penalty {sample.repetition_penalty}", "PARAMETER repeat_last_n -1"]
    lines += [f"PARAMETER stop {json.dumps(token, ensure_ascii=False)}" for token in stop]
    return "\n".join(lines) + "\n"
