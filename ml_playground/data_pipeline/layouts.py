"""The layout stage of ``prepare``: encoded text -> the token files, written atomically (nothing is kept
when anything fails).

- **stream**: ``train.bin`` / ``val.bin``, the text encoded chunk by chunk (``streaming``); the
  validation part is the last ``val_fraction`` of the characters.
- **records**: ``{split}.bin``, ``{split}_mask.bin`` (1 where a token is a target of the loss) and
  ``{split}_index.bin`` (first token, header tokens, all tokens of each record), which the
  record-aware windows of ``batches.py`` read for every family alike. The last ``val_fraction`` of
  the records (at least one) is validation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml_playground.core.atomic import atomic_open
from ml_playground.core.errors import DataError
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.data_pipeline.encoders import Finished, RecordEncoder, batched
from ml_playground.data_pipeline.meta import TOKENIZER_DIR
from ml_playground.data_pipeline.sources.records import SniffedFile
from ml_playground.data_pipeline.streaming import Split, TokenFileWriter, encode_into, iter_chunks, token_dtype

ENCODE_BATCH = 256  # records encoded together: parallel in the tokenizer, bounded in memory


@dataclass(frozen=True)
class Written:
    train_tokens: int
    val_tokens: int
    finished: Finished | None = None  # the records layout's encoder report


def _too_short(val_tokens: int, path: Path) -> DataError:
    return DataError(
        f"validation split has {val_tokens} tokens; use more text or a larger prepare.val_fraction", path=path
    )


def write_stream(
    out: Path, files: list[SniffedFile], tokenizer: Tokenizer, split: Split, *, whole: bool, input_path: Path
) -> Written:
    """``whole``: encode the text at once (a pretrained tokenizer may join tokens across any cut)."""
    dtype = token_dtype(tokenizer.vocab_size)
    with atomic_open(out / "train.bin") as train_handle, atomic_open(out / "val.bin") as val_handle:
        train, val = TokenFileWriter(train_handle, dtype), TokenFileWriter(val_handle, dtype)
        chunks: Iterator[str] = iter(["".join(iter_chunks(files))]) if whole else iter_chunks(files)
        encode_into(chunks, split, tokenizer.encode_array, train, val)
        if val.count < 2:  # raised inside: neither token file is kept
            raise _too_short(val.count, input_path)
        tokenizer.save(out / TOKENIZER_DIR)
    return Written(train.count, val.count)


def write_records(
    out: Path, records: Iterator[Any], total: int, n_val: int, encoder: RecordEncoder, *, input_path: Path
) -> Written:
    """Each record through ``encoder``, appended to its split's tokens, mask and index."""
    dtype = token_dtype(encoder.tokenizer.vocab_size)
    first_val = total - n_val
    kept = {"train": 0, "val": 0}
    with (
        atomic_open(out / "train.bin") as train_ids,
        atomic_open(out / "val.bin") as val_ids,
        atomic_open(out / "train_mask.bin") as train_mask,
        atomic_open(out / "val_mask.bin") as val_mask,
        atomic_open(out / "train_index.bin") as train_index,
        atomic_open(out / "val_index.bin") as val_index,
    ):
        writers = {
            "train": (TokenFileWriter(train_ids, dtype), train_mask, train_index),
            "val": (TokenFileWriter(val_ids, dtype), val_mask, val_index),
        }
        for batch in batched(records, ENCODE_BATCH):
            for (position, _), encoded in zip(batch, encoder.encode(batch), strict=True):
                if encoded is None:
                    continue
                split = "val" if position >= first_val else "train"
                ids, mask, index = writers[split]
                index.write(np.asarray([[ids.count, encoded.header, len(encoded.ids)]], dtype=np.int64).tobytes())
                ids.write(np.asarray(encoded.ids, dtype=np.int64))
                mask.write(encoded.mask.tobytes())
                kept[split] += 1
        finished = encoder.finish(out, kept["train"], kept["val"])
        train_count, val_count = writers["train"][0].count, writers["val"][0].count
        if val_count < 2:
            raise _too_short(val_count, input_path)
        encoder.tokenizer.save(out / TOKENIZER_DIR)
    return Written(train_count, val_count, finished)
