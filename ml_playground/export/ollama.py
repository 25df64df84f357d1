"""An Ollama ``Modelfile`` for an exported GGUF: template, stop tokens, sampling defaults from ``[sample]``."""

from __future__ import annotations

import json

from ml_playground.configuration.models import SampleConfig


def modelfile(gguf_name: str, sample: SampleConfig, stop: list[str], context_length: int) -> str:
    """The model continues raw text: the template passes the prompt through unchanged."""
    lines = [
        f"FROM ./{gguf_name}",
        'TEMPLATE """{{ .Prompt }}"""',
        f"PARAMETER num_ctx {context_length}",
        f"PARAMETER temperature {sample.temperature}",
        f"PARAMETER num_predict {sample.max_new_tokens}",
    ]
    if sample.top_k is not None:
        lines.append(f"PARAMETER top_k {sample.top_k}")
    if sample.top_p is not None:
        lines.append(f"PARAMETER top_p {sample.top_p}")
    lines += [f"PARAMETER stop {json.dumps(token, ensure_ascii=False)}" for token in stop]
    return "\n".join(lines) + "\n"
