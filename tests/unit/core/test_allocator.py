"""Freed tensor memory stays in the process: re-allocating an activation-sized block costs no page faults."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ml_playground.core.allocator import keep_freed_memory, set_thresholds

# Like a training step: sixteen 2 MiB activations live at once, then all freed; 50 times. Prints the
# minor page faults the 50 rounds took.
ALLOCATE = """
import ctypes, resource, sys, torch
from ml_playground.core import allocator
# glibc's starting point held fixed (its threshold otherwise moves with what was freed before)
ctypes.CDLL("libc.so.6").mallopt(allocator.M_MMAP_THRESHOLD, 128 * 1024)
if sys.argv[1] == "keep":
    assert allocator.keep_freed_memory()
def step():
    activations = [torch.ones(512 * 1024) for _ in range(16)]
    del activations
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", ALLOCATE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    default, kept = page_faults("default"), page_faults("keep")
    pages = 50 * 16 * (2 * 2**20 // 4096)
    assert default >= pages  # every block mapped afresh: every page faulted in again, every round
    assert kept < pages / 100


def test_setting_is_made_once_per_process() -> None:
    assert keep_freed_memory() is keep_freed_memory()


def test_a_c_library_that_cannot_be_loaded_is_left_alone() -> None:
    assert not set_thresholds("libdoes-not-exist.so")
