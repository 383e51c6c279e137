"""Keeping the plot cache under its size: the least recently used PNGs go first.

Plots are derived data (a record re-renders its plot on the next fetch), so the cache may drop any of
them at any time. Each process counts what it stores; once it has stored a twentieth of the cap since
it last looked (or has never looked), it walks the cache and removes the PNGs used longest ago until
the cache holds at most nine tenths of the cap. "Used" is the file's modification time, which storing
a plot and every cache hit set to now, to the nanosecond (:meth:`SizeCap.used`), so nothing depends
on the file system keeping access times. Several processes may sweep at once: a file already gone is
simply skipped, and a reader that loses a file to a sweep renders the plot again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import suppress
from pathlib import Path

log = logging.getLogger(__name__)

KEEP_FRACTION = 0.9
SWEEP_FRACTION = 0.05


class SizeCap:
    """The size cap of one cache directory, as seen by this process (``max_bytes`` 0: no cap)."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._stored_since_sweep: int | None = None  # None: not swept yet in this process
        self._lock = threading.Lock()

    def used(self, path: Path) -> None:
        """Mark ``path`` as used now, to the nanosecond, when there is a cap.

        The file system stamps writes with a clock that moves in steps of milliseconds, which would leave
        plots used within one step in no order. A file that cannot be touched (a read-only cache) keeps
        its time: the cache still serves it.
        """
        if self.max_bytes <= 0:
            return
        now = time.time_ns()
        with suppress(OSError):
            os.utime(path, ns=(now, now))

    def stored(self, path: Path, size: int) -> None:
        """Note the ``size`` bytes just stored at ``path``; sweep when enough has been stored since the
        last sweep."""
        if self.max_bytes <= 0:
            return
        self.used(path)
        with self._lock:
            since = self._stored_since_sweep
            due = since is None or since + size >= self.max_bytes * SWEEP_FRACTION
            self._stored_since_sweep = 0 if due else (since or 0) + size
        if due:
            self.sweep()

    def sweep(self) -> tuple[int, int]:
        """Remove the least recently used PNGs while the cache is over the cap; ``(bytes kept, files
        removed)``. Files that vanish or cannot be removed meanwhile are skipped (logged once a sweep)."""
        files: list[tuple[int, int, Path]] = []
        for sub in _entries(self.directory):
            if not sub.is_dir() or sub.name.startswith("."):
                continue
            for entry in _entries(Path(sub.path)):
                if not entry.name.endswith(".png"):
                    continue
                try:
                    stat = entry.stat()
                except OSError:
                    continue
                files.append((stat.st_mtime_ns, stat.st_size, Path(entry.path)))
        total = sum(size for _, size, _ in files)
        if total <= self.max_bytes:
            return total, 0
        goal, removed, failure = self.max_bytes * KEEP_FRACTION, 0, None
        for _, size, path in sorted(files, key=lambda f: f[0]):
            if total <= goal:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                failure = exc
                continue
            total -= size
            removed += 1
        if failure is not None:
            log.warning("plot cache %s: cannot remove old plots (%s)", self.directory, failure)
        return total, removed


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as found:
            return list(found)
    except OSError:
        return []
