"""gunicorn settings used by ``explain-service serve``."""

from __future__ import annotations

import os

from explain_service.logs import gunicorn_logconfig

# The threaded worker (several requests per process, HTTP/1.1 keep-alive), with gunicorn's own error
# answers (400/414/431, timeouts) in the JSON error shape. Threads let concurrent requests of a worker
# share one audit commit (see audit/group.py); `serve --threads 1` still serves, one request at a time.
worker_class = "explain_service.gunicorn_worker.JsonErrorThreadWorker"
threads = 4
# Idle kept-alive connections close after this many seconds: longer than a pooled client's pause
# between calls, shorter than a load balancer's own idle timeout should be (set that one higher).
keepalive = 15
# gunicorn's request limits, stated here because the service documents them: beyond them the
# worker answers 414 (request line) or 431 (header fields) before the app runs.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# One fixed control-socket path per user would be shared by every gunicorn on the machine.
control_socket_disable = True
# Every line, gunicorn's and the app's, is one JSON object (explain_service/logs.py); the access log
# stays off unless `serve --access-log` (or EXPLAIN_ACCESS_LOG=1) asks for it, and then carries the
# app's request fields (explain_service/gunicorn_log.py).
logconfig_dict = gunicorn_logconfig(
    access_log=os.environ.get("EXPLAIN_ACCESS_LOG", "").lower() in ("1", "true", "yes", "on")
)
logger_class = "explain_service.gunicorn_log.JsonAccessLogger"
# Native libraries get one thread per request thread (XGBoost's nthread is set per model, see
# registry/model.py); concurrency comes from worker processes and their request threads.
raw_env = ["OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1", "MKL_NUM_THREADS=1"]
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")


def post_fork(server: object, worker: object) -> None:
    """No ``Server: gunicorn`` banner on the worker's responses; native thread pools of one thread."""
    from explain_service.access.headers import drop_server_banner

    drop_server_banner()
    one_native_thread()


def one_native_thread() -> None:
    """Limit OpenMP and BLAS pools already loaded in this process to one thread each.

    The environment above covers libraries loaded after it is read; a pool a library started before
    (a preloaded app imports numpy in the arbiter) is capped here.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def child_exit(server: object, worker: object) -> None:
    """Drop a dead worker's metric files (Prometheus multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
