"""The LoRA row's overrides: absolute paths, the user's cache folder with ``~`` expanded."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.bench.lora_benchmarks import LoraBenchSizes, bench_overrides

pytestmark = pytest.mark.unit


def test_the_cache_folder_is_the_users_not_a_folder_named_tilde(tmp_path: Path) -> None:
    overrides = bench_overrides(tmp_path / "19001.txt", tmp_path / "dataset", LoraBenchSizes())
    cache = next(o for o in overrides if o.startswith("prepare.cache_dir="))
    folder = Path(cache.removeprefix("prepare.cache_dir=").strip("'"))
    assert "~" not in folder.parts
    assert folder == (Path.home() / ".cache" / "ml_playground").resolve()
