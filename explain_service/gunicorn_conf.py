"""gunicorn settings used by ``explain-service serve``."""

from __future__ import annotations

import os

worker_class = "sync"
# One fixed control-socket path per user would be shared by every gunicorn on the machine.
control_socket_disable = True
# Native libraries get one thread per worker; concurrency comes from worker processes.
raw_env = ["OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1", "MKL_NUM_THREADS=1"]
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")


def child_exit(server: object, worker: object) -> None:
    """Drop a dead worker's metric files (Prometheus multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
