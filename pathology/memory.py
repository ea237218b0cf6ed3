"""Keep freed memory in the process, so batch-sized tensors are reused instead of remapped.

glibc serves allocations above its mmap threshold (at most 32 MB, however it adapts) with
fresh ``mmap`` calls and returns them on ``free``; a CPU forward pass over a batch of
patches allocates float tensors of 50-150 MB, so every batch page-faults and zeroes them
afresh. Raising the mmap and trim thresholds lets those blocks be reused from the heap:
`stain-texture` embeds 1.4-2x faster on the 2-core benchmark machine
(``benchmarks/bench_embed.py``). The price is that up to the trim threshold of freed memory
stays with the process. Other C libraries: nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # mallopt parameters (malloc.h)
RETAIN_BYTES = 1 << 30                       # allocations up to 1 GiB come from the heap; 1 GiB may stay free

_applied: bool | None = None


def reuse_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; whether that took effect."""
    global _applied
    if _applied is None:
        _applied = False
        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
            _applied = bool(mallopt(M_MMAP_THRESHOLD, RETAIN_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, RETAIN_BYTES))
        except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
            pass
        log.debug("allocator: freed memory %s", "kept for reuse" if _applied else "left to the C library")
    return _applied
