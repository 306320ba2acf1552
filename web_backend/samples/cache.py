"""Instant samples kept in memory: the same name is the same character, so a crowd
asking for a famous name costs one render."""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["SampleCache", "SampleKey"]

SampleKey = tuple[str, int, float | None]  # (model, seed, psi)


class SampleCache:
    """(model, seed, psi) -> PNG, least recently used out first; ``size`` 0 keeps none."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pngs: OrderedDict[SampleKey, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: SampleKey) -> bytes | None:
        with self._lock:
            png = self._pngs.get(key)
            if png is not None:
                self._pngs.move_to_end(key)
            return png

    def put(self, key: SampleKey, png: bytes) -> None:
        if not self.size:
            return
        with self._lock:
            self._pngs[key] = png
            self._pngs.move_to_end(key)
            while len(self._pngs) > self.size:
                self._pngs.popitem(last=False)
