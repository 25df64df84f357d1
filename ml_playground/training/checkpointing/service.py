"""Everything written under ``out_dir/checkpoints/``: layout, atomic writes, manifest, rotation, loading.

Layout::

    checkpoints/
      step_00000250/            one checkpoint, self-describing
        manifest.json           written last: format, step, sha256 and size of every other file
        model.safetensors       weights (tied tensors stored once, aliases in the metadata)
        ema.safetensors         optional averaged weights
        training_state.pt       optimizer state and RNG states: tensors and plain values only
        state.json              step, loop counters, hook states, sampler position
        tokenizer/              the tokenizer, so the checkpoint needs nothing else
      last.json, best.json      pointers to a checkpoint folder, replaced atomically

A checkpoint folder is assembled under a temporary name and renamed into place, then the
pointers move: a crash at any moment leaves the previous checkpoint intact and loadable.
Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ml_playground.core.atomic import atomic_write_text, fsync_dir
from ml_playground.core.errors import CheckpointError
from ml_playground.data_pipeline.meta import TOKENIZER_DIR

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
TRAINING_STATE_FILE = "training_state.pt"
STATE_FILE = "state.json"
STEP_PREFIX = "step_"

FileWriter = Callable[[Path, bytes], None]


def write_file_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@dataclass
class CheckpointPayload:
    """What a checkpoint holds; the training side fills it, this module turns it into files."""

    step: int
    model: Mapping[str, torch.Tensor]
    training: Mapping[str, Any]  # training_state.pt: optimizer, RNG, grad scaler (tensors and plain data)
    state: Mapping[str, Any]  # state.json: loop counters, hooks, sampler
    config: Mapping[str, Any]
    model_config: Mapping[str, Any]
    tokenizer_dir: Path | None = None
    ema: Mapping[str, torch.Tensor] | None = None
    extra_meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    manifest: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any]
    training_state: dict[str, Any] | None

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR

    def weights(self, which: str = "raw") -> dict[str, torch.Tensor]:
        """The saved weights, or (``"ema"``) with the averaged ones in place of the trained parameters."""
        if which != "ema":
            return dict(self.model)
        if self.ema is None:
            raise CheckpointError(
                "this checkpoint has no EMA weights (train with train.model.ema.enabled = true)", path=self.path
            )
        return {**self.model, **self.ema}


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors refuses shared storage (tied weights): store each tensor once, aliases in metadata."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in tensors.items():
        key = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()), tuple(tensor.shape))
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        unique[name] = tensor.detach().to("cpu").contiguous()
    return safetensors.torch.save(unique, metadata={"aliases": json.dumps(aliases)})


def tensors_from_bytes(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = safetensors.torch.load(data)
        # The header is a length-prefixed JSON object (the safetensors format); metadata lives in it.
        header_length = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_length]).get("__metadata__") or {}
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"unreadable safetensors file ({exc})", path=path) from None
    for alias, name in json.loads(metadata.get("aliases", "{}")).items():
        tensors[alias] = tensors[name]
    return tensors


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CheckpointService:
    def __init__(
        self,
        out_dir: Path,
        *,
        keep_last: int = 2,
        write_file: FileWriter = write_file_durably,
        warn: Callable[[str], None] = print,
    ) -> None:
        self.directory = out_dir / "checkpoints"
        self.keep_last = keep_last
        self._write_file = write_file
        self._warn = warn

    def step_dirs(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        dirs = [p for p in self.directory.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)]
        return sorted(dirs, key=lambda p: p.name)

    def remove_partial(self) -> None:
        """Temp folders left by a crash mid-save; they were never pointed to."""
        if self.directory.is_dir():
            for leftover in self.directory.glob(".tmp-*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def save(self, payload: CheckpointPayload, tags: set[str]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{STEP_PREFIX}{payload.step:08d}"
        tmp = self.directory / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            self._write_payload(tmp, payload)
            fsync_dir(tmp)
            if final.exists():
                stale = self.directory / f".tmp-replaced-{final.name}-{os.getpid()}"
                os.replace(final, stale)
                os.replace(tmp, final)
                shutil.rmtree(stale, ignore_errors=True)
            else:
                os.replace(tmp, final)
            fsync_dir(self.directory)
            for tag in sorted(tags):
                pointer = {"dir": final.name, "step": payload.step, **payload.extra_meta}
                atomic_write_text(self.directory / f"{tag}.json", json.dumps(pointer))
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            previous = self._pointer_target("last")
            kept = f"; the previous checkpoint {previous.name} is intact" if previous else ""
            raise CheckpointError(
                f"could not write checkpoint for step {payload.step} ({exc.strerror or exc}){kept}",
                path=self.directory,
            ) from None
        self._rotate()
        return final

    def _write_payload(self, directory: Path, payload: CheckpointPayload) -> None:
        files: dict[str, bytes] = {
            MODEL_FILE: tensors_to_bytes(payload.model),
            STATE_FILE: json.dumps({"step": payload.step, **payload.state}, indent=2).encode(),
        }
        if payload.ema is not None:
            files[EMA_FILE] = tensors_to_bytes(payload.ema)
        buffer = io.BytesIO()
        torch.save(dict(payload.training), buffer)
        files[TRAINING_STATE_FILE] = buffer.getvalue()
        if payload.tokenizer_dir is not None:
            for source in sorted(payload.tokenizer_dir.iterdir()):
                if source.is_file() and not source.name.startswith("."):
                    files[f"{TOKENIZER_DIR}/{source.name}"] = source.read_bytes()
        entries = {}
        for name, data in files.items():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            self._write_file(target, data)
            entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": payload.step,
            "created_unix_s": time.time(),
            "files": entries,
            "model_config": dict(payload.model_config),
            "config": dict(payload.config),
            "tokenizer": {"dir": TOKENIZER_DIR} if payload.tokenizer_dir is not None else None,
            **payload.extra_meta,
        }
        self._write_file(directory / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())

    def _pointer_target(self, tag: str) -> Path | None:
        pointer = self.directory / f"{tag}.json"
        try:
            name = json.loads(pointer.read_text("utf-8"))["dir"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        target = self.directory / str(name)
        return target if target.is_dir() else None

    def pointer_info(self, tag: str) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = json.loads((self.directory / f"{tag}.json").read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return info

    def _rotate(self) -> None:
        protected = {p for p in (self._pointer_target("last"), self._pointer_target("best")) if p is not None}
        dirs = self.step_dirs()
        for old in dirs[: max(0, len(dirs) - self.keep_last)]:
            if old not in protected:
                shutil.rmtree(old, ignore_errors=True)

    def resolve(self, which: str) -> Path:
        """``last``, ``best`` or a folder path -> the checkpoint folder; refuses what is not there."""
        if which in ("last", "best"):
            target = self._pointer_target(which)
            if target is None:
                raise CheckpointError(f"no '{which}' checkpoint yet (run train first)", path=self.directory)
            return target
        path = Path(which).expanduser()
        if not (path / MANIFEST).is_file():
            raise CheckpointError("not a checkpoint folder (no manifest.json)", path=path)
        return path

    def verify(self, path: Path) -> dict[str, Any]:
        """Read the manifest and check every file's size and checksum; name the first bad file."""
        manifest_path = path / MANIFEST
        try:
            manifest: dict[str, Any] = json.loads(manifest_path.read_text("utf-8"))
            files = manifest["files"]
        except FileNotFoundError:
            raise CheckpointError("manifest missing (incomplete checkpoint)", path=manifest_path) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"unreadable manifest ({exc})", path=manifest_path) from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format {manifest.get('format_version')} is not supported (expected {FORMAT_VERSION})",
                path=manifest_path,
            )
        for name, entry in files.items():
            file = path / name
            if not file.is_file():
                raise CheckpointError("file missing from checkpoint", path=file)
            if file.stat().st_size != entry["bytes"]:
                raise CheckpointError(f"truncated: {file.stat().st_size} of {entry['bytes']} bytes", path=file)
            if _sha256(file) != entry["sha256"]:
                raise CheckpointError("checksum mismatch (corrupted file)", path=file)
        return manifest

    def load(self, path: Path, *, with_training_state: bool = True) -> LoadedCheckpoint:
        manifest = self.verify(path)
        model = tensors_from_bytes((path / MODEL_FILE).read_bytes(), path / MODEL_FILE)
        ema = None
        if EMA_FILE in manifest["files"]:
            ema = tensors_from_bytes((path / EMA_FILE).read_bytes(), path / EMA_FILE)
        state = json.loads((path / STATE_FILE).read_text("utf-8"))
        training_state = self._load_training_state(path / TRAINING_STATE_FILE) if with_training_state else None
        return LoadedCheckpoint(path, manifest, model, ema, state, training_state)

    @staticmethod
    def _load_training_state(path: Path) -> dict[str, Any]:
        try:
            # A hostile file may also trigger torch's protocol warnings; the refusal below says enough.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                loaded: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"refused to load: the file holds objects other than tensors and plain data ({first_line})",
                path=path,
            ) from None
        except (RuntimeError, EOFError) as exc:
            raise CheckpointError(f"unreadable training state ({exc})", path=path) from None
        return loaded

    def load_latest_intact(self) -> LoadedCheckpoint | None:
        """The ``last`` checkpoint, or, if it is damaged, the newest one that verifies (saying so)."""
        last = self._pointer_target("last")
        candidates = [last] if last is not None else []
        candidates += [p for p in reversed(self.step_dirs()) if p != last]
        for index, candidate in enumerate(candidates):
            try:
                loaded = self.load(candidate)
            except CheckpointError as exc:
                self._warn(f"warning: skipping damaged checkpoint: {exc}")
                continue
            if index > 0:
                self._warn(f"resuming from {candidate.name}, the newest intact checkpoint")
            return loaded
        return None
