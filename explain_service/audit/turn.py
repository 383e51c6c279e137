"""Turns between the appending processes of one host: who commits the next group.

Every worker process groups its own threads' appends (:mod:`.group`); the database lock then orders the
groups of different processes. Waiting on that lock is costly where it matters most: SQLite's busy
handler sleeps in steps of 1, 2, 5, 10... ms, far longer than the flush it waits for, and a process's group
is already fixed while it waits. So the leader of each process first takes its host's turn, a blocking
``flock`` on a lock file (the kernel wakes the next waiter the moment the lock is released), and only then
takes its queue: what its threads queued while another process flushed goes into one group.

The turn is an optimisation, never a condition: the database lock still orders every append (a batch job,
another host), and a lock file that cannot be opened or locked means appending without turns, logged once.

Lock files: next to a SQLite database (``<file>-append.lock``); for PostgreSQL, one per database URL in
the temporary directory, readable and writable by the service's user only.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class HostTurn:
    """A lock file the appending processes of a host take turns on; call it for a context manager."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pid: int | None = None
        self._fd: int | None = None
        self._broken = False

    @classmethod
    def for_database(cls, sqlite_path: str | None, url_text: str) -> HostTurn:
        """The turn of a SQLite file (beside it), or of a server database named by ``url_text``."""
        if sqlite_path is not None:
            return cls(f"{sqlite_path}-append.lock")
        digest = hashlib.sha256(url_text.encode()).hexdigest()[:16]
        return cls(os.path.join(tempfile.gettempdir(), f"explain-service-audit-{digest}.lock"))

    @contextmanager
    def __call__(self) -> Iterator[None]:
        fd = self._descriptor()
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # sleeps in the kernel, the GIL released
            except OSError as exc:
                self._give_up(exc)
                fd = None
        try:
            yield
        finally:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _descriptor(self) -> int | None:
        if self._broken:
            return None
        if self._pid != os.getpid():  # a forked child must not share its parent's open file (and lock)
            self._pid, self._fd = os.getpid(), None
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                self._give_up(exc)
        return self._fd

    def _give_up(self, exc: OSError) -> None:
        log.warning("audit appends without turns between processes: lock file %s: %s", self.path, exc)
        self._broken = True
