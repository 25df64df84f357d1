"""Build a tiny real Qwen2 causal LM (random weights) with a BPE tokenizer trained on text files.

    uv run python tools/make_tiny_hf_model.py out/tiny-qwen2 ../shared/data/bundestag
    uv run ml_playground loop bundestag_qwen15b_lora_mps --set train.model.base_model='"out/tiny-qwen2"'

It trains in seconds on a CPU and exercises the whole fine-tuning path; its text is noise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm


def _texts(path: Path) -> Iterator[str]:
    files = [path] if path.is_file() else sorted(path.rglob("*.txt"))
    for file in files:
        yield file.read_text("utf-8-sig", errors="replace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tiny Qwen2 model + tokenizer for trying LoRA fine-tuning")
    parser.add_argument("out", type=Path)
    parser.add_argument("text", type=Path, help="a text file or a folder of .txt files to train the tokenizer on")
    parser.add_argument("--vocab-size", type=int, default=512)
    args = parser.parse_args(argv)
    if not args.text.exists():
        print(f"error: {args.text}: not found", file=sys.stderr)
        return 2
    build_tiny_causal_lm(args.out, _texts(args.text), vocab_size=args.vocab_size)
    print(f"tiny Qwen2 model and tokenizer in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
