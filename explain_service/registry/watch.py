"""Noticing that a loaded model's files changed on disk, and why a version is unavailable.

A version is verified in full when it is loaded (every file's sha256 against the
manifest). While it is served, :class:`VersionFiles` re-checks it cheaply: a
``stat`` of each file, and a full sha256 only when size or mtime moved or when a
full check is asked for (readiness). A failed check makes the version
:class:`BrokenVersion`: a value with a public reason, never a crash.

A broken version keeps the :func:`directory_stamp` it failed with; when the
directory's files change again (an operator put them right), it is loaded anew.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from time import monotonic

from explain_service.registry.artifacts import PICKLE_SUFFIXES

_CHUNK = 1 << 20


@dataclass(frozen=True)
class BrokenVersion:
    """A registered version that cannot be served, and why (no filesystem paths in ``reason``)."""

    name: str
    version: str
    reason: str

    def describe(self) -> str:
        return f"{self.name} version {self.version}: {self.reason}"


def file_sha256(path: Path) -> str:
    """Streaming sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def directory_stamp(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, size and mtime of every entry of ``directory`` (empty when it is gone)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return ()
    out = []
    for entry in entries:
        try:
            st = entry.stat()
        except OSError:
            continue
        out.append((entry.name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


class VersionFiles:
    """The files of one loaded version, with the hashes they had when it was verified."""

    def __init__(self, directory: Path, hashes: dict[str, str]) -> None:
        self.directory = directory
        self.hashes = dict(hashes)
        self._stats: dict[str, tuple[int, int]] = {}
        for fname in self.hashes:
            st = (directory / fname).stat()
            self._stats[fname] = (st.st_size, st.st_mtime_ns)

    def problem(self, *, full: bool) -> str | None:
        """Why the files no longer match (a public reason), or None when they still do.

        ``full`` hashes every file; otherwise only files whose size or mtime changed.
        """
        try:
            names = os.listdir(self.directory)
        except OSError:
            return "the version directory cannot be read"
        pickles = sorted(n for n in names if n.lower().endswith(PICKLE_SUFFIXES))
        if pickles:
            return f"{pickles[0]}: pickle-family files are never loaded; re-register the model"
        for fname, expected in self.hashes.items():
            path = self.directory / fname
            try:
                st = path.stat()
                stat = (st.st_size, st.st_mtime_ns)
                if not full and self._stats[fname] == stat:
                    continue
                actual = file_sha256(path)
            except OSError as exc:
                return f"{fname}: cannot read ({exc.strerror or type(exc).__name__})"
            if actual != expected:
                return f"{fname}: sha256 {actual} does not match the one verified at load ({expected})"
            self._stats[fname] = stat
        return None


Key = tuple[str, str]


class Verdicts:
    """What is known about each version's files: verified (and when), or broken (and why).

    The registry asks :meth:`due` on every use; only when a check is due does it take its
    lock and call :meth:`recheck`, so a request normally pays two dict lookups.
    """

    def __init__(self, recheck_seconds: float) -> None:
        self.recheck_seconds = recheck_seconds
        self._files: dict[Key, VersionFiles] = {}
        self._checked: dict[Key, tuple[float, float]] = {}  # (last stat check, last full hash)
        # why, the directory stamp it failed with, and when the directory was last looked at
        self._broken: dict[Key, tuple[BrokenVersion, tuple[tuple[str, int, int], ...], float]] = {}

    def due(self, key: Key, *, full: bool) -> bool:
        last_stat, last_full = self._checked.get(key, (0.0, 0.0))
        return monotonic() - (last_full if full else last_stat) >= self.recheck_seconds

    def verified(self, key: Key, files: VersionFiles) -> None:
        """``key`` was just loaded from ``files``, every hash checked."""
        now = monotonic()
        self._broken.pop(key, None)
        self._files[key] = files
        self._checked[key] = (now, now)

    def recheck(self, key: Key, *, full: bool) -> str | None:
        """Re-verify a verified version when due; its problem, or None when it still matches."""
        files = self._files.get(key)
        if files is None or not self.due(key, full=full):
            return None
        problem = files.problem(full=full)
        now = monotonic()
        self._checked[key] = (now, now if full else self._checked.get(key, (now, now))[1])
        return problem

    def broken(self, key: Key, directory: Path) -> BrokenVersion | None:
        """Why ``key`` is broken; forgotten (None) once its directory's files changed.

        The directory is looked at again at most every ``recheck_seconds``.
        """
        entry = self._broken.get(key)
        if entry is None:
            return None
        broken, stamp, looked = entry
        now = monotonic()
        if now - looked < self.recheck_seconds:
            return broken
        if directory_stamp(directory) != stamp:
            del self._broken[key]
            return None
        self._broken[key] = (broken, stamp, now)
        return broken

    def mark_broken(
        self, key: Key, directory: Path, reason: str, stamp: tuple[tuple[str, int, int], ...] | None = None
    ) -> BrokenVersion:
        """Record ``key`` as broken as of ``stamp`` (the directory now when not given)."""
        self.forget(key)
        broken = BrokenVersion(key[0], key[1], reason)
        self._broken[key] = (broken, directory_stamp(directory) if stamp is None else stamp, monotonic())
        return broken

    def forget(self, key: Key) -> None:
        """Drop everything known about ``key`` (its directory is gone)."""
        self._files.pop(key, None)
        self._checked.pop(key, None)
        self._broken.pop(key, None)

    def all_broken(self) -> list[BrokenVersion]:
        return [entry[0] for _, entry in sorted(self._broken.items())]
