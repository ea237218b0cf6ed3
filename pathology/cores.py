"""How many cores this process may use (its CPU affinity, which job schedulers set)."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores available to this process: the affinity mask where the OS has one."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def share_cores(jobs: int, workers: int) -> tuple[int, int]:
    """Worker processes for ``jobs`` items (at most ``workers``, at least 1) and the threads
    each may use, so that together they fill the available cores without oversubscribing."""
    workers = max(1, min(workers, jobs))
    return workers, max(1, available_cores() // workers)
