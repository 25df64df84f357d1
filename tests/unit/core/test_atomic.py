from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.core.atomic import atomic_open, atomic_write_text, atomic_write_with

pytestmark = pytest.mark.unit


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_failure_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def write_half_then_fail() -> None:
        with atomic_open(target) as handle:
            handle.write(b"half")
            raise RuntimeError("disk vanished")

    with pytest.raises(RuntimeError):
        write_half_then_fail()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_write_with_path_writer(tmp_path: Path) -> None:
    target = tmp_path / "g.bin"
    atomic_write_with(target, lambda p: p.write_bytes(b"xyz"))
    assert target.read_bytes() == b"xyz"

    def broken(path: Path) -> None:
        path.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write_with(target, broken)
    assert target.read_bytes() == b"xyz"
    assert [p.name for p in tmp_path.iterdir()] == ["g.bin"]


def test_files_and_folders_get_the_umask_permissions_not_the_temp_ones(tmp_path: Path) -> None:
    """mkstemp/mkdtemp make 0600/0700; what users and other programs (Ollama) read must not stay so."""
    import os
    import stat

    from ml_playground.core.atomic import replace_dir

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        replace_dir(tmp_path / "export", lambda folder: (folder / "model.gguf").write_bytes(b"GGUF"))
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
