"""Conversations through three real chat-template styles (ChatML as SmolLM2 writes it, Qwen2's, a
Llama-3-style one), with tiny local tokenizers: the targets are exactly the assistant turns plus their
end-of-turn token, and templates the prefix rendering cannot trust are refused in one line."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ml_playground.core.errors import ConfigError
from ml_playground.data_pipeline.chat_encoding import ChatEncoder, FitCounts, fit, load_template

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN2 = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3 = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
TEXT = "Wer antwortet auf die Frage? Die Bundesregierung antwortet. Hello there, how are you? I am fine, thanks. " * 20

CONVERSATION = [
    {"role": "system", "content": "Es antwortet die Ministerin."},
    {"role": "user", "content": "Wann kommt das Gesetz?"},
    {"role": "assistant", "content": "Im Herbst."},
    {"role": "user", "content": "Und warum so spät?"},
    {"role": "assistant", "content": "Weil wir gründlich sind."},
]


def tokenizer(specials: list[str], template: str, **tokens: str) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([TEXT], trainer)
    built = PreTrainedTokenizerFast(tokenizer_object=bpe, **tokens)  # type: ignore[no-untyped-call]
    built.chat_template = template
    return built


STYLES = {
    "smollm2": (CHATML_SPECIALS, SMOLLM2, {"eos_token": "<|im_end|>"}, "<|im_end|>"),
    "qwen2": (CHATML_SPECIALS, QWEN2, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, "<|im_end|>"),
    "llama3": (
        LLAMA_SPECIALS,
        LLAMA3,
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
        "<|eot_id|>",
    ),
}


@pytest.mark.parametrize("style", sorted(STYLES))
@pytest.mark.parametrize("turns", ["all", "last"])
def test_targets_are_exactly_the_assistant_turns_and_their_end_of_turn(style: str, turns: str) -> None:
    specials, template, tokens, end_of_turn = STYLES[style]
    hf = tokenizer(specials, template, **tokens)
    encoder = ChatEncoder(hf, template, turns)  # type: ignore[arg-type]
    encoded = encoder.encode(CONVERSATION)
    targets = encoded.mask.astype(bool)
    answers = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    expected = "".join(a + end_of_turn for a in (answers if turns == "all" else answers[-1:]))
    assert hf.decode(encoded.ids[targets].tolist()) == expected
    assert encoder.end_of_turn == {end_of_turn}
    # the whole sequence is the template's own rendering, token for token of each part
    assert hf.decode(encoded.ids.tolist()) == hf.apply_chat_template(CONVERSATION, tokenize=False)
    # the prompt the model sees at inference is exactly what precedes the first trained answer
    asked = CONVERSATION[:2] if turns == "all" else CONVERSATION[:4]
    prompt = hf.apply_chat_template(asked, tokenize=False, add_generation_prompt=True)
    first = int(np.argmax(targets))
    assert hf.decode(encoded.ids[:first].tolist()) == prompt
    assert encoded.turn_ends[-1] <= len(encoded.ids)


def test_a_template_that_is_not_prefix_stable_is_refused() -> None:
    template = (
        "{{ 'turns: ' + (messages | length | string) + '\\n' }}{% for m in messages %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    hf = tokenizer(CHATML_SPECIALS, template, eos_token="<|im_end|>")
    with pytest.raises(ConfigError, match="prefix-stable") as error:
        ChatEncoder(hf, template).encode(CONVERSATION)
    assert error.value.key == "prepare.chat_template"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        (
            "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}",
            "no special token",
        ),
        (
            "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] | upper + '<|im_end|>\\n' }}"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            "changes the assistant's text",
        ),
        ("{% for m in messages %}{{ m['nope'] + 1 }}{% endfor %}", "failed to render"),
    ],
)
def test_templates_the_rendering_cannot_trust_are_refused(template: str, problem: str) -> None:
    hf = tokenizer(CHATML_SPECIALS, template, eos_token="<|im_end|>")
    with pytest.raises(ConfigError, match=problem):
        ChatEncoder(hf, template).encode(CONVERSATION)


def test_long_conversations_are_cut_after_a_turn_or_dropped_and_counted() -> None:
    hf = tokenizer(CHATML_SPECIALS, SMOLLM2, eos_token="<|im_end|>")
    encoded = ChatEncoder(hf, SMOLLM2).encode(CONVERSATION)
    first_turn, whole = encoded.turn_ends
    counts = FitCounts()
    assert fit(encoded, len(encoded.ids), counts) is encoded
    cut = fit(encoded, whole - 1, counts)
    assert cut is not None
    assert len(cut.ids) == first_turn
    assert hf.decode(cut.ids[cut.mask.astype(bool)].tolist()) == "Im Herbst.<|im_end|>"
    assert fit(encoded, first_turn - 1, counts) is None
    assert (counts.kept, counts.cut, counts.dropped) == (1, 1, 1)


def test_the_template_comes_from_the_config_a_file_or_the_tokenizer(tmp_path: Any) -> None:
    hf = tokenizer(CHATML_SPECIALS, SMOLLM2, eos_token="<|im_end|>")
    assert load_template(None, hf, "base") == SMOLLM2
    assert load_template(QWEN2, hf, "base") == QWEN2
    (tmp_path / "t.jinja").write_text(LLAMA3, "utf-8")
    assert load_template(str(tmp_path / "t.jinja"), hf, "base") == LLAMA3
    with pytest.raises(ConfigError, match="neither a Jinja template nor a file"):
        load_template(str(tmp_path / "missing.jinja"), hf, "base")
    hf.chat_template = None
    with pytest.raises(ConfigError, match=r"has no chat template; set prepare\.chat_template"):
        load_template(None, hf, "base")
