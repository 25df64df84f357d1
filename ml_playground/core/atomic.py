"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.

A crash at any moment leaves either the old file or the new one, never a partial one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TextIO


def current_umask() -> int:
    """The process's umask (only readable by setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replaced_on_success(path: Path) -> Iterator[Path]:
    """A temp path beside ``path``: after the block it is fsynced and renamed onto ``path``; on error removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; the file is for others to read too
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path``; on success it replaces ``path``, on error it is removed."""
    with _replaced_on_success(path) as tmp, open(tmp, "wb") as handle:
        yield handle


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: Path, write: Callable[[Path], None]) -> None:
    """Atomically produce ``path`` with a writer that only accepts a file path (matplotlib, torch.save)."""
    with _replaced_on_success(path) as tmp:
        write(tmp)


@contextlib.contextmanager
def atomic_open_text(path: Path, newline: str | None = None) -> Iterator[TextIO]:
    """Like ``atomic_open`` for UTF-8 text (``newline=""`` for the csv module)."""
    with _replaced_on_success(path) as tmp, open(tmp, "w", encoding="utf-8", newline=newline) as handle:
        yield handle


def replace_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Produce the folder ``target`` with ``write(tmp_dir)`` and swap it in; on any error the old one stays.

    The temporary folder sits beside ``target`` (same file system), so the swap is two renames.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700: an Ollama server or a teammate could not read it
    try:
        write(tmp)
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
