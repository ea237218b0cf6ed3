"""A freed batch-sized buffer stays with the process for the next batch (glibc), instead of
being unmapped and mapped, faulted in and zeroed again."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import os, sys
import numpy as np
from pathology.memory import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "on" else False
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
a = np.ones(64 << 20, np.uint8)  # a 64 MB batch tensor, every page written
del a
print(applied, (rss() - before) >> 20)
"""


def kept_after_free(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, megabytes = out.split()
    return applied == "True", int(megabytes)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator")
def test_a_freed_batch_buffer_stays_for_reuse():
    _, default_kept = kept_after_free("off")
    applied, kept = kept_after_free("on")
    assert default_kept < 8            # by default the 64 MB block is unmapped on free
    assert applied and kept >= 60      # kept in the heap, already faulted in, for the next batch
