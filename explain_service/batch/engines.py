"""Where chunks are computed: in the driver, in local worker processes, or on Dask.

Every engine maps :func:`explain_chunk` over an iterator of chunks, keeps a
bounded number of chunks in flight (memory is bounded by the chunk size, not
the input size) and yields results as they complete, in any order: the driver
commits each one as it arrives (see :mod:`.manifest`).

Models reach worker processes as a :class:`ModelBundle`: the bytes of the
version directory's files and its manifest. The worker writes them to a
private temporary directory and loads them with
:func:`~explain_service.registry.load_version_dir`, which checks every file's
sha256 before deserializing anything, and then checks that the model's
identity is the one the job was started with. No model object is ever
pickled.

Threads: chunks computed at once x native threads per chunk (XGBoost's
``nthread``, BLAS and OpenMP pools) never exceeds the cores. The local default
computes one chunk per core at once in the driver's process, one native thread
each: XGBoost releases the GIL, so the cores stay busy with TreeSHAP while one
chunk is validated or encoded in Python (measured against one chunk at a time
on every core and against one process per core in bench/RESULTS.md, "Batch").
On Dask each task uses one thread; a worker runs as many tasks at once as it
has threads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from explain_service.batch.compute import ChunkPlan, ChunkResult, RawChunk, explain_chunk
from explain_service.registry.manifest import MANIFEST_NAME, Manifest
from explain_service.registry.model import LoadedModel
from explain_service.registry.store import load_version_dir

ENGINES = ("local", "dask")


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ModelBundle:
    """A model version as bytes: its manifest and every file the manifest lists."""

    name: str
    version: str
    sha256: str
    files: dict[str, bytes]

    @classmethod
    def from_dir(cls, version_dir: Path, sha256: str) -> ModelBundle:
        """Read ``version_dir``; ``sha256`` is the identity the job was started with."""
        raw = (version_dir / MANIFEST_NAME).read_bytes()
        manifest = Manifest.parse(raw)
        if manifest.sha256 != sha256:
            raise RuntimeError(f"{version_dir} changed while the job was starting")
        files = {MANIFEST_NAME: raw}
        for fname in manifest.files:
            files[fname] = (version_dir / fname).read_bytes()
        return cls(manifest.name, manifest.version, sha256, files)

    def load(self) -> LoadedModel:
        """Verify and load the model from a private temporary directory."""
        for fname in self.files:
            if "/" in fname or "\\" in fname or fname.startswith("."):
                raise RuntimeError(f"model bundle holds an unsafe file name {fname!r}")
        tmp = Path(tempfile.mkdtemp(prefix="explain-batch-model-"))
        try:
            for fname, data in self.files.items():
                (tmp / fname).write_bytes(data)
            model = load_version_dir(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if model.sha256 != self.sha256:
            raise RuntimeError(f"model bundle is {model.sha256[:12]}, the job needs {self.sha256[:12]}")
        return model


_MODELS: dict[str, LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def worker_model(bundle: ModelBundle, threads: int) -> LoadedModel:
    """The bundle's model, loaded once per process."""
    with _MODELS_LOCK:
        model = _MODELS.get(bundle.sha256)
        if model is None:
            model = _MODELS[bundle.sha256] = bundle.load()
            model.set_threads(threads)
        return model


def _limit_native_threads(threads: int) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)


# -- local -------------------------------------------------------------------------------------------


class InProcessEngine:
    """Chunks computed in the driver's own process: ``concurrent`` at once on threads.

    XGBoost and NumPy release the GIL, so while one chunk is in Python (validation,
    encoding) the others keep the cores busy; each chunk uses ``cores // concurrent``
    native threads.
    """

    def __init__(self, model: LoadedModel, plan: ChunkPlan, *, concurrent: int, threads: int) -> None:
        self.model, self.plan, self.concurrent, self.threads = model, plan, concurrent, threads
        self.description = f"local, in-process, {concurrent} chunk(s) at once x {threads} thread(s)"

    def __enter__(self) -> InProcessEngine:
        self._saved = self.model.threads
        self.model.set_threads(self.threads)
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.set_threads(self._saved)

    def run(self, chunks: Iterable[RawChunk]) -> Iterator[ChunkResult]:
        if self.concurrent == 1:
            for chunk in chunks:
                yield explain_chunk(self.model, chunk, self.plan)
            return
        with ThreadPoolExecutor(max_workers=self.concurrent, thread_name_prefix="batch-chunk") as pool:
            work = functools.partial(_explain_with, self.model, self.plan)
            yield from _bounded(pool, chunks, 2 * self.concurrent, work)


def _explain_with(model: LoadedModel, plan: ChunkPlan, chunk: RawChunk) -> ChunkResult:
    return explain_chunk(model, chunk, plan)


def _bounded(
    pool: Executor, chunks: Iterable[RawChunk], window: int, work: Callable[[RawChunk], ChunkResult]
) -> Iterator[ChunkResult]:
    """``work(chunk)`` over ``chunks`` with at most ``window`` in flight; results as they complete."""
    pending: set[Future[ChunkResult]] = set()
    source = iter(chunks)
    exhausted = False
    try:
        while pending or not exhausted:
            while not exhausted and len(pending) < window:
                chunk = next(source, None)
                if chunk is None:
                    exhausted = True
                else:
                    pending.add(pool.submit(work, chunk))
            if pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
    finally:
        for future in pending:
            future.cancel()


_WORKER_BUNDLE: ModelBundle | None = None
_WORKER_THREADS = 1


def _exit_with_parent(parent: int) -> None:
    """End this worker when the driver is gone (killed drivers leave no orphan computing)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="batch-parent-watch", daemon=True).start()


def _init_process(bundle: ModelBundle, threads: int, parent: int) -> None:
    global _WORKER_BUNDLE, _WORKER_THREADS
    _exit_with_parent(parent)
    _limit_native_threads(threads)
    _WORKER_BUNDLE, _WORKER_THREADS = bundle, threads
    worker_model(bundle, threads)


def _process_chunk(plan: ChunkPlan, chunk: RawChunk) -> ChunkResult:
    assert _WORKER_BUNDLE is not None
    return explain_chunk(worker_model(_WORKER_BUNDLE, _WORKER_THREADS), chunk, plan)


class ProcessEngine:
    """Chunks computed by ``workers`` spawned processes, ``threads`` native threads each."""

    def __init__(self, bundle: ModelBundle, plan: ChunkPlan, workers: int, threads: int) -> None:
        self.bundle, self.plan, self.workers, self.threads = bundle, plan, workers, threads
        self.description = f"local, {workers} processes x {threads} thread(s)"
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ProcessEngine:
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_process,
            initargs=(self.bundle, self.threads, os.getpid()),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def run(self, chunks: Iterable[RawChunk]) -> Iterator[ChunkResult]:
        assert self._pool is not None
        yield from _bounded(
            self._pool, chunks, 2 * self.workers, functools.partial(_process_chunk, self.plan)
        )


# -- dask --------------------------------------------------------------------------------------------


def _dask_chunk(bundle: ModelBundle, chunk: RawChunk, plan: ChunkPlan) -> ChunkResult:
    return explain_chunk(worker_model(bundle, 1), chunk, plan)


class DaskEngine:
    """Chunks computed as tasks on dask.distributed: a LocalCluster, or the cluster at ``scheduler``."""

    def __init__(
        self, bundle: ModelBundle, plan: ChunkPlan, *, workers: int, scheduler: str | None = None
    ) -> None:
        self.bundle, self.plan, self.workers, self.scheduler = bundle, plan, workers, scheduler
        self.description = (
            f"dask at {scheduler}" if scheduler else f"dask LocalCluster, {workers} processes x 1 thread"
        )
        self._client: Any = None
        self._cluster: Any = None

    def __enter__(self) -> DaskEngine:
        from distributed import Client, LocalCluster

        if self.scheduler:
            self._client = Client(self.scheduler, timeout="30s")
        else:
            self._cluster = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            self._client = Client(self._cluster)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            if self._client is not None:
                self._client.close()
        with contextlib.suppress(Exception):
            if self._cluster is not None:
                self._cluster.close()

    def run(self, chunks: Iterable[RawChunk]) -> Iterator[ChunkResult]:
        from distributed import as_completed

        client = self._client
        info = client.scheduler_info(n_workers=-1)
        threads = sum(w.get("nthreads", 1) for w in info["workers"].values()) or 1
        window = 2 * threads
        bundle = client.scatter(self.bundle, broadcast=True, hash=False)
        plan = client.scatter(self.plan, broadcast=True, hash=False)
        running = as_completed()
        in_flight = 0
        source = iter(chunks)
        exhausted = False
        while in_flight or not exhausted:
            while not exhausted and in_flight < window:
                chunk = next(source, None)
                if chunk is None:
                    exhausted = True
                    continue
                data = client.scatter(chunk, hash=False)
                running.add(client.submit(_dask_chunk, bundle, data, plan, pure=False))
                in_flight += 1
            if in_flight:
                future = next(running)
                in_flight -= 1
                result = future.result()
                future.release()
                yield result
