"""A thread-safe least-recently-used memo: each value is made once, however many threads ask.

The viewer's clients ask for the same tiles at once (a browser opens six connections, and
colleagues look at the same slide); a value being made is waited for, not made again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

V = TypeVar("V")


class Memo(Generic[V]):
    """Values by key, the least recently used dropped once their summed ``cost`` exceeds
    ``capacity`` (bytes for tiles, 1 per item for open slides)."""

    def __init__(self, capacity: float, cost: Callable[[V], float] = lambda _: 1):
        self.capacity, self._cost = capacity, cost
        self._values: OrderedDict[Hashable, tuple[V, float]] = OrderedDict()
        self._making: dict[Hashable, Future] = {}
        self._lock = threading.Lock()
        self.used = 0.0
        self.hits = self.misses = 0

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        """The value of ``key``, made by ``make()`` if no thread has it or is making it.
        An exception from ``make`` reaches every waiting thread and nothing is kept."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                self.hits += 1
                return self._values[key][0]
            pending = self._making.get(key)
            if pending is None:
                self.misses += 1
                pending = self._making[key] = Future()
                owner = True
            else:
                owner = False
        if not owner:
            return pending.result()
        try:
            value = make()
        except BaseException as exc:
            with self._lock:
                del self._making[key]
            pending.set_exception(exc)
            raise
        cost = self._cost(value)
        with self._lock:
            del self._making[key]
            self._values[key] = (value, cost)
            self.used += cost
            while self.used > self.capacity and len(self._values) > 1:
                _, (_, dropped) = self._values.popitem(last=False)
                self.used -= dropped
        pending.set_result(value)
        return value

    def __len__(self) -> int:
        return len(self._values)
