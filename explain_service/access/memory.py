"""A per-process moving-window store for the rate limits, used for ``EXPLAIN_RATELIMIT_STORAGE_URI=memory://``.

Why not ``limits``' own ``memory://`` storage: it expires entries from a :class:`threading.Timer` that
lives 10 ms, so a worker serving requests further apart than that starts (and waits for) a new thread
on almost every request, which was most of what the limits cost per request (``bench/RESULTS.md``,
Access control). It also stores a hit of cost ``n`` as ``n`` list entries inserted at the front.

Here each key holds a deque of ``(time, units)`` with a running total: a hit drops what has left the
window from the old end and appends at the new end, so it costs O(1) amortised whatever the cost or
the limit, and no thread is involved. Keys idle for longer than their window are swept, at most once
per :data:`SWEEP_SECONDS`, by whichever call comes next. Only the moving window is implemented,
the one strategy :mod:`.limits` uses.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from limits.storage import MovingWindowSupport, Storage

SCHEME = "explain-memory"
SWEEP_SECONDS = 60.0


class _Window:
    __slots__ = ("expiry", "hits", "total")

    def __init__(self, expiry: float) -> None:
        self.expiry = expiry
        self.hits: deque[tuple[float, int]] = deque()
        self.total = 0

    def drop_before(self, start: float) -> None:
        hits = self.hits
        while hits and hits[0][0] <= start:
            self.total -= hits.popleft()[1]


class WindowMemoryStorage(Storage, MovingWindowSupport):
    """In-process moving windows: what one worker has admitted per key (see the module docstring)."""

    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: float | str | bool):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()
        self._swept = time.time()

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Admit ``amount`` units under ``key`` if the last ``expiry`` seconds hold at most ``limit - amount``."""
        if amount > limit:
            return False
        now = time.time()
        with self._lock:
            self._sweep(now)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(expiry)
            window.drop_before(now - expiry)
            if window.total + amount > limit:
                return False
            window.hits.append((now, amount))
            window.total += amount
            return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """``(time of the oldest hit in the window, units in it)``; ``(now, 0)`` for an empty window."""
        now = time.time()
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                return now, 0
            window.drop_before(now - expiry)
            if not window.hits:
                return now, 0
            return window.hits[0][0], window.total

    def _sweep(self, now: float) -> None:
        if now - self._swept < SWEEP_SECONDS:
            return
        self._swept = now
        idle = [key for key, w in self._windows.items() if not w.hits or w.hits[-1][0] <= now - w.expiry]
        for key in idle:
            del self._windows[key]

    # The counter interface of limits' Storage, which the moving window never uses.
    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        raise NotImplementedError("only the moving-window strategy is supported")

    def get(self, key: str) -> int:
        with self._lock:
            window = self._windows.get(key)
            return 0 if window is None else window.total

    def get_expiry(self, key: str) -> float:
        with self._lock:
            window = self._windows.get(key)
            if window is None or not window.hits:
                return time.time()
            return window.hits[0][0] + window.expiry

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with self._lock:
            count = len(self._windows)
            self._windows.clear()
            return count

    def clear(self, key: str) -> None:
        with self._lock:
            self._windows.pop(key, None)
