"""A freed batch-sized buffer stays with the process for the next batch (glibc), instead of
being unmapped and mapped, faulted in and zeroed again.

Checked with glibc's own bookkeeping (``mallinfo2``: bytes in mmapped chunks, bytes in use
and free in the heap), which is exact, rather than with the resident set size, which
depends on the kernel. What it saves in time and RSS: ``benchmarks/bench_memory.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import ctypes, json, sys
import numpy as np
from pathology.memory import reuse_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Mallinfo2
applied = reuse_freed_memory() if sys.argv[1] == "on" else False
before = mallinfo2()
a = np.ones(64 << 20, np.uint8)  # a 64 MB batch tensor, every page written
during = mallinfo2()
del a
after = mallinfo2()
print(json.dumps({"applied": applied,
                  "mmapped": during.hblkhd - before.hblkhd,         # the block came from its own mmap
                  "heap_used": during.uordblks - before.uordblks,   # or from the heap
                  "unmapped": during.hblkhd - after.hblkhd,         # given back to the system on free
                  "kept_free": after.fordblks - during.fordblks,    # or kept as free heap memory
                  "trimmed": during.arena - after.arena}))
"""
BLOCK = 64 << 20
SMALL = 1 << 20          # far below the block: what the interpreter itself may allocate meanwhile


def allocation(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator")
def test_a_freed_batch_buffer_stays_for_reuse():
    default = allocation("off")
    assert not default["applied"]
    # by default the 64 MB block is mmapped on its own and unmapped on free
    assert default["mmapped"] >= BLOCK and default["unmapped"] == default["mmapped"]
    # (the heap may move by a few bytes for numpy's own bookkeeping, never by the block)
    assert default["heap_used"] < SMALL and default["kept_free"] < SMALL
    kept = allocation("on")
    assert kept["applied"]
    # with reuse_freed_memory it comes from the heap and stays there, free, for the next batch
    assert kept["mmapped"] == 0 and kept["heap_used"] >= BLOCK
    assert kept["kept_free"] >= BLOCK and kept["trimmed"] == 0
