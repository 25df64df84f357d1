"""Plain-text sources: one file, a folder of text files, or a URL fetched once into a cache."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ml_playground.core.atomic import atomic_write_bytes
from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.sources.encoding import decode_bytes
from ml_playground.data_pipeline.sources.normalize import normalize_text

TEXT_SUFFIXES = {".txt", ".md", ".text", ".jsonl"}


@dataclass(frozen=True)
class SourceText:
    path: Path
    text: str
    sha256: str
    encoding: str


def fetch_cached(url: str, cache_dir: Path, timeout_s: float = 30.0) -> Path:
    """Download ``url`` once into ``cache_dir/downloads``; later calls reuse the file."""
    name = url.rstrip("/").rsplit("/", 1)[-1] or "download"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    target = cache_dir.expanduser() / "downloads" / f"{digest}-{name}"
    if target.is_file():
        return target
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            data = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"could not download {url} ({reason}); download it yourself and set prepare.input_path to the local file",
            key="prepare.input_path",
        ) from None
    atomic_write_bytes(target, data)
    return target


def resolve_input(input_path: str, cache_dir: Path) -> Path:
    if input_path.startswith(("http://", "https://")):
        return fetch_cached(input_path, cache_dir)
    return Path(input_path).expanduser()


def list_text_files(path: Path, suffixes: set[str] = TEXT_SUFFIXES) -> list[Path]:
    if not path.exists():
        raise DataError("input not found", path=path)
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise DataError(f"no text files ({', '.join(sorted(suffixes))}) in this folder", path=path)
    return files


def read_text_file(path: Path, encoding: str | None = None) -> SourceText:
    """Read and validate one file: not empty, not binary, decodable (detected or given encoding), normalised."""
    data = path.read_bytes()
    if not data.strip():
        raise DataError("file is empty", path=path)
    if b"\x00" in data[:65536]:
        raise DataError("file looks binary (contains NUL bytes), expected text", path=path)
    decoded = decode_bytes(data, path, encoding)
    return SourceText(path, normalize_text(decoded.text), hashlib.sha256(data).hexdigest(), decoded.encoding)


def read_sources(input_path: str, cache_dir: Path, encoding: str | None = None) -> list[SourceText]:
    return [read_text_file(p, encoding) for p in list_text_files(resolve_input(input_path, cache_dir))]
