"""A small per-execution-environment cache in front of DynamoDB.

Entries live at most ``seconds`` (a few seconds), so a forced refresh done by another execution
environment reaches this one within that bound, while warm bursts skip the DynamoDB read.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class MemoryCache[V]:
    def __init__(self, seconds: float, max_entries: int = 64) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, now: float | None = None) -> V | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= now:
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: str, value: V, *, seconds: float | None = None, now: float | None = None) -> None:
        ttl = self.seconds if seconds is None else seconds
        if ttl <= 0:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            self._entries[key] = (now + ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
