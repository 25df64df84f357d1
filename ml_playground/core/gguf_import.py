"""A local ``.gguf`` file (what Ollama and LM Studio keep on disk) as a Hugging Face model folder.

``transformers`` reads GGUF files itself (``gguf_file=``), dequantizing every tensor, which takes
a while, and refuses to ``save_pretrained`` what it loaded that way. So the architecture is built
from the config it read, the dequantized weights are loaded into it, and the result is saved once
as safetensors (with the tokenizer and its chat template) under
``cache_dir/gguf/<file stem>-<fingerprint>/``; later runs load that folder directly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from ml_playground.core.atomic import replace_dir
from ml_playground.core.errors import ConfigError

GGUF_SUFFIX = ".gguf"
DONE_MARKER = ".complete"
SOURCE_FILE = "gguf_source.json"


def is_gguf(name: str) -> bool:
    return name.lower().endswith(GGUF_SUFFIX)


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def gguf_header(path: Path, key: str) -> dict[str, str]:
    """The file's architecture and pre-tokenizer name; one line when the file is not GGUF (``hf_folder_for``
    says so when it is missing)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        found = {}
        for name in ("general.architecture", "tokenizer.ggml.pre"):
            field = reader.fields.get(name)
            if field is not None:
                found[name] = str(field.contents())
        if "general.architecture" not in found:
            raise KeyError("general.architecture")
        return found
    except (ValueError, KeyError, IndexError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not a readable GGUF file ({first})", key=key) from None


def supported_architectures() -> list[str]:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(GGUF_CONFIG_MAPPING)


def hf_folder_for(
    name: str, cache_dir: Path, key: str, read_header: Callable[[Path, str], dict[str, str]] = gguf_header
) -> str:
    """``name`` itself, or for a ``.gguf`` file the cached Hugging Face folder made from it.

    A folder made before (the same file: path, size and modification time) is returned without reading the
    file: parsing a GGUF's metadata reads every entry of its vocabulary, 2.3 s for SmolLM2-135M on a 2-core
    AMD EPYC, and a model and its tokenizer each ask for the folder."""
    if not is_gguf(name):
        return name
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(f"GGUF file {path} does not exist", key=key)
    target = cache_dir.expanduser() / "gguf" / f"{path.stem}-{_fingerprint(path)}"
    if (target / DONE_MARKER).is_file():
        return str(target)
    header = read_header(path, key)
    architecture = header["general.architecture"]
    supported = supported_architectures()
    if architecture not in supported:
        raise ConfigError(
            f"{path}: architecture {architecture!r} cannot be read by transformers (it reads: {', '.join(supported)})",
            key=key,
        )
    _convert(path, target, key, header)
    return str(target)


def _convert(path: Path, target: Path, key: str, header: dict[str, str]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ml_playground.core.hf_quiet import quiet_transformers

    quiet_transformers()
    folder, file = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    except Exception as exc:  # transformers' GGUF readers fail in many ways (tokenizers raises plain Exception)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot read {path} with transformers ({first})", key=key) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # the weights are dequantized now
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config

    def write(folder: Path) -> None:
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        source = {"file": str(path), **header}  # the export back to GGUF keeps the file's pre-tokenizer
        (folder / SOURCE_FILE).write_text(json.dumps(source, indent=2), encoding="utf-8")
        (folder / DONE_MARKER).write_text(f"converted from {path}\n", encoding="utf-8")

    replace_dir(target, write)
