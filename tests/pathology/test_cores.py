"""Cores shared between batch workers and their threads."""

from __future__ import annotations

from pathology import cores


def test_workers_and_threads_fill_the_cores(monkeypatch):
    monkeypatch.setattr(cores, "available_cores", lambda: 8)
    assert cores.share_cores(jobs=10, workers=1) == (1, 8)
    assert cores.share_cores(jobs=10, workers=4) == (4, 2)
    assert cores.share_cores(jobs=2, workers=4) == (2, 4)     # no idle workers for a small batch
    assert cores.share_cores(jobs=0, workers=4) == (1, 8)
    assert cores.share_cores(jobs=10, workers=16) == (10, 1)  # at least one thread each
