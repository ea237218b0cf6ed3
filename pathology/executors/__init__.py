"""Executors run a batch's stages over its slides: ``local`` (inline or worker processes on
this machine) and ``ray`` (tasks and actor pools on a Ray cluster). Found by name in
:data:`EXECUTORS` (docs/architecture.md, "Batches and executors")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Executor, Finished
from .local import LocalExecutor

EXECUTORS: dict[str, Callable[..., Executor]] = {"local": LocalExecutor}


def _ray(**options: Any) -> Executor:
    from .ray_cluster import RayExecutor  # ray is an optional extra: imported only when asked for

    return RayExecutor(**options)


EXECUTORS["ray"] = _ray

__all__ = ["EXECUTORS", "Executor", "Finished", "LocalExecutor"]
