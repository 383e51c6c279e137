"""The parts directory of a job and its manifest: what makes a job resumable and exactly-once.

Layout, next to the output ``OUT.parquet``::

    OUT.parquet.parts/
        .lock                          flock'ed by the one driver working on the job
        manifest.json                  the job's identity and every committed chunk
        audit.key                      with --audit: the job's secret for record ids (mode 0600)
        part-000000.parquet            output rows of chunk 0 (input rows 0 .. N-1)
        part-000000.rejected.jsonl     its rejected rows (only when it has some)
        ...

A chunk is *committed* when its files have been written durably (temporary
name, fsync, rename, fsync of the directory) and then the manifest listing it,
with its row counts and the sha256 of its files, has been replaced the same
way. Only the driver writes here. After a crash at any point:

* a temporary file is garbage and is removed;
* a part that the manifest does not list (the crash came between its rename and
  the manifest's) is removed and its chunk computed again;
* a listed part whose bytes no longer match its hash is dropped and recomputed.

Chunk ``k`` always covers input rows ``k*N .. k*N+N-1`` and its bytes depend on
nothing else, so a chunk computed twice is the same chunk: no row is lost,
none is written twice, and the combined file equals that of a run that never
stopped. A manifest whose job identity (the input's path and whole-file
sha256, model, methods, options, chunk size) differs from the new run's is
refused: a changed input is never resumed, whatever its size and mtime say.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from explain_service.batch.audit import new_audit_key
from explain_service.batch.io import fsync_dir, write_durable

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
AUDIT_KEY_NAME = "audit.key"
JOB_FORMAT = 1


class JobStateError(Exception):
    """The parts directory cannot be used for this run (the message says what to do)."""


@dataclass(frozen=True)
class ChunkRecord:
    """One committed chunk."""

    rows: int
    written: int
    rejected: int
    part_sha256: str
    rejected_sha256: str | None


@dataclass
class JobManifest:
    """The identity of a job and its committed chunks."""

    job: dict[str, Any]
    chunks: dict[int, ChunkRecord] = field(default_factory=dict)
    total_chunks: int | None = None

    def to_json(self) -> bytes:
        data = {
            "format": JOB_FORMAT,
            "job": self.job,
            "total_chunks": self.total_chunks,
            "chunks": {str(k): asdict(v) for k, v in sorted(self.chunks.items())},
        }
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> JobManifest:
        data = orjson.loads(raw)
        if data.get("format") != JOB_FORMAT:
            raise ValueError(f"unsupported job manifest format {data.get('format')!r}")
        chunks = {int(k): ChunkRecord(**v) for k, v in data["chunks"].items()}
        return cls(job=data["job"], chunks=chunks, total_chunks=data.get("total_chunks"))


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def rejected_name(index: int) -> str:
    return f"part-{index:06d}.rejected.jsonl"


def sha256_file(path: Path) -> str | None:
    """The file's sha256, or None when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two job identities."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


class PartsDir:
    """The parts directory of one output file, locked for the lifetime of this object."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = output.with_name(output.name + ".parts")
        self.manifest: JobManifest | None = None
        self.audit_key: str | None = None
        self._lock_fd: int | None = None

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    def open(self, job: dict[str, Any], *, resume: bool, audit: bool = False) -> JobManifest:
        """Start a new job or take up the one recorded here; refuses what cannot be resumed.

        ``audit``: the job stores audit records; a new job draws its audit key (written before
        the manifest, so a manifest always has its key), a resumed one reads it back into
        :attr:`audit_key`.
        """
        existed = self.path.exists()
        if existed and not resume:
            raise JobStateError(
                f"{self.path} holds the parts of an unfinished job: pass --resume to finish it, "
                "or delete the directory to start again"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        manifest: JobManifest | None = None
        if self.manifest_path.exists():
            try:
                manifest = JobManifest.parse(self.manifest_path.read_bytes())
            except (ValueError, KeyError, TypeError) as exc:
                raise JobStateError(f"unreadable job manifest {self.manifest_path}: {exc}") from None
            self._check_identity(manifest.job, job)
            self._check_parts(manifest)
            if audit:
                self.audit_key = self._read_audit_key()
        else:
            manifest = JobManifest(job=job)
            if audit:
                self.audit_key = new_audit_key()
                write_durable(self.path / AUDIT_KEY_NAME, self.audit_key.encode(), mode=0o600)
            write_durable(self.manifest_path, manifest.to_json())
        self._sweep(manifest)
        self.manifest = manifest
        return manifest

    def _check_identity(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Refuse to resume a job whose input content or parameters differ from this run's."""
        changed = differences(old, new)
        if not changed:
            return
        if "input.path" not in changed and any(c.startswith("input.") for c in changed):
            raise JobStateError(
                f"cannot resume: the input {new['input']['path']} changed since the job started "
                f"(its sha256 differs from the one recorded in {self.manifest_path}); rerun with the "
                f"original input, or delete {self.path} to start again"
            )
        raise JobStateError(
            f"cannot resume: the job in {self.path} was started with different "
            f"{', '.join(changed)}; rerun with the original parameters and input, "
            "or delete the directory to start again"
        )

    def _read_audit_key(self) -> str:
        """The key the job's record ids were made with; without it a resume could store rows twice."""
        try:
            key = (self.path / AUDIT_KEY_NAME).read_text().strip()
            bytes.fromhex(key)
        except (OSError, ValueError):
            raise JobStateError(
                f"cannot resume: {self.path / AUDIT_KEY_NAME}, the key of this job's audit record ids, "
                "is missing or unreadable; delete the directory to start again"
            ) from None
        return key

    def _lock(self) -> None:
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JobStateError(f"another batch job is writing {self.path}") from None
        self._lock_fd = fd

    def _check_parts(self, manifest: JobManifest) -> None:
        """Drop committed chunks whose files are missing or changed; they are computed again."""
        for index, record in list(manifest.chunks.items()):
            ok = sha256_file(self.path / part_name(index)) == record.part_sha256
            if ok and record.rejected_sha256 is not None:
                ok = sha256_file(self.path / rejected_name(index)) == record.rejected_sha256
            if not ok:
                del manifest.chunks[index]
                manifest.total_chunks = None

    def _sweep(self, manifest: JobManifest) -> None:
        """Remove temporary files and parts that no committed chunk owns."""
        keep = {MANIFEST_NAME, LOCK_NAME, AUDIT_KEY_NAME}
        for index, record in manifest.chunks.items():
            keep.add(part_name(index))
            if record.rejected_sha256 is not None:
                keep.add(rejected_name(index))
        for entry in self.path.iterdir():
            if entry.name not in keep:
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        fsync_dir(self.path)

    def commit(self, index: int, record: ChunkRecord, part: bytes, rejected: bytes) -> None:
        """Write a chunk's files durably, then the manifest that lists it."""
        assert self.manifest is not None
        if rejected:
            write_durable(self.path / rejected_name(index), rejected)
        write_durable(self.path / part_name(index), part)
        self.manifest.chunks[index] = record
        write_durable(self.manifest_path, self.manifest.to_json())

    def set_total(self, total_chunks: int) -> None:
        """Record how many chunks the input has (known once it has been read to the end)."""
        assert self.manifest is not None
        if self.manifest.total_chunks != total_chunks:
            self.manifest.total_chunks = total_chunks
            write_durable(self.manifest_path, self.manifest.to_json())

    def remove(self) -> None:
        """Delete the directory (after the final file is in place)."""
        self.close()
        shutil.rmtree(self.path)
        fsync_dir(self.path.parent)

    def close(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None
