"""A tokenizer as llama.cpp's byte-level BPE vocabulary (``tokenizer.ggml.model = "gpt2"``), for any family's GGUF.

Our BPE and tiktoken vocabularies are byte-level BPE already; a character vocabulary becomes one
token per character, with merges that rebuild each multi-byte character from its UTF-8 bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.export.request import ExportError


@dataclass(frozen=True)
class GgufVocab:
    tokens: list[str]
    types: list[int]  # 1 normal, 3 control
    merges: list[str]
    eos_id: int | None


def _byte_chars() -> dict[int, str]:
    from gguf.vocab import bytes_to_unicode

    return bytes_to_unicode()


def char_vocab(chars: list[str]) -> GgufVocab:
    """One token per character, with merges that rebuild each multi-byte character from its UTF-8 bytes."""
    mapping = _byte_chars()
    tokens, merges = [], []
    for char in chars:
        pieces = [mapping[b] for b in char.encode("utf-8")]
        tokens.append("".join(pieces))
        for length in range(1, len(pieces)):  # ((b1 b2) b3) b4: left to right
            merges.append(f"{''.join(pieces[:length])} {pieces[length]}")
    if not merges:
        # llama.cpp needs a merges list and the gguf package writes no empty arrays. Two NUL bytes never
        # occur in a text we tokenized (files with NUL bytes are refused as binary), so this merge never applies.
        merges.append(f"{mapping[0]} {mapping[0]}")
    return GgufVocab(tokens, [1] * len(tokens), merges, None)


def bpe_vocab_from_backend(backend_json: str) -> GgufVocab:
    spec = json.loads(backend_json)
    vocab: dict[str, int] = spec["model"]["vocab"]
    specials = {added["content"]: added["id"] for added in spec.get("added_tokens", [])}
    size = max([*vocab.values(), *specials.values()]) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [5] * size  # unused
    for token, index in {**vocab, **specials}.items():
        tokens[index] = token
        types[index] = 3 if token in specials else 1
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    eos = specials.get("<|endoftext|>", specials.get("<|end|>"))
    return GgufVocab(tokens, types, merges, eos)


def gguf_vocab(tokenizer: Tokenizer) -> GgufVocab:
    """A byte-level BPE backend as it is; a vocabulary of single characters rebuilt from bytes."""
    spec = json.loads(tokenizer.to_backend().to_str())
    model = spec["model"]
    if model["type"] == "BPE":
        return bpe_vocab_from_backend(json.dumps(spec))
    if model["type"] == "WordLevel" and all(len(token) == 1 for token in model["vocab"]):
        return char_vocab(sorted(model["vocab"], key=model["vocab"].__getitem__))
    raise ExportError(f"no GGUF tokenizer for a {tokenizer.kind} tokenizer ({model['type']} model)")
