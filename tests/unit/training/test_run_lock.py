from __future__ import annotations

import os
from pathlib import Path

import pytest

from ml_playground.core.errors import UserError
from ml_playground.training.run_lock import RunLock

pytestmark = pytest.mark.unit


def test_second_run_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run") as lock:
        assert lock.path.read_text() == str(os.getpid())
        with (
            pytest.raises(UserError, match=rf"another run \(pid {os.getpid()}\) is writing this folder"),
            RunLock(tmp_path / "run"),
        ):
            pass
    with RunLock(tmp_path / "run"):
        pass  # released on exit: a later run may take it
