"""A real ``explain-service serve`` (gunicorn) in a subprocess, for tests that need the whole stack.

``serve_in(tmp_path, ...)`` is a context manager: it registers one tiny model (``tiny``, a
two-feature logistic regression) in a private models directory, points the audit store at a
private SQLite file, starts the server on a free 127.0.0.1 port in its own process group,
waits for ``/healthz`` and, on exit, stops the whole group. The ``live_server`` fixture
(module scope) wraps it; ``LiveServer.raw`` sends bytes as they are and returns what came back.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from explain_service.registry.store import register_model

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = "tiny"
BOOT_SECONDS = 180.0  # importing the stack takes a few seconds, far more on a busy machine
STOP_SECONDS = 20.0


@dataclass
class Answer:
    """One HTTP answer: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class LiveServer:
    """A running ``explain-service serve``; ``log`` holds its stdout and stderr."""

    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Answer:
        """One request through http.client (which sends the path as given)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def raw(self, data: bytes, *, pause_after: int | None = None, timeout: float = 30.0) -> bytes:
        """Send ``data`` as is and read one answer: until its body is complete or the server closes.

        With ``pause_after``, only the first that many bytes are sent; the rest never comes. (The
        server keeps an HTTP/1.1 connection open after a complete answer, so reading until it closes
        would wait for its keep-alive timeout.)
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data if pause_after is None else data[:pause_after])
            received = b""
            with contextlib.suppress(ConnectionResetError):
                while not _complete(received) and (chunk := sock.recv(65536)):
                    received += chunk
            return received

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole answer whose end its head announces (a Content-Length, or no body)."""
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return False
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines[1:])}
    if status in (204, 304) or 100 <= status < 200:
        return True
    if "content-length" in fields:
        return len(body) >= int(fields["content-length"])
    return False  # chunked or delimited by the close: read on


def parse_raw(data: bytes) -> Answer:
    """Split a raw HTTP/1.1 answer (as ``LiveServer.raw`` returns it) into an ``Answer``."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), headers, body)


def register_tiny_model(models_dir: Path) -> None:
    """A two-feature logistic regression, fitted on seeded data in milliseconds."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=200), "x2": rng.normal(size=200)})
    labels = np.where(frame["x1"] + 0.5 * frame["x2"] > 0, "yes", "no")
    model = LogisticRegression().fit(frame, labels)
    register_model(model, TINY_MODEL, background=frame.iloc[:50], models_dir=models_dir, favorable="yes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_env(root: Path, extra: dict[str, str] | None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("EXPLAIN_") or k.startswith("EXPLAIN_TEST_")
    }
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        EXPLAIN_MODELS_DIR=str(root / "models"),
        EXPLAIN_DATABASE_URL=f"sqlite:///{root / 'var' / 'audit.sqlite3'}",
        EXPLAIN_PLOTS_DIR=str(root / "var" / "plots"),
        EXPLAIN_AUTH="off",
        EXPLAIN_RATELIMIT_DEFAULT="",
        PROMETHEUS_MULTIPROC_DIR=str(root / "var" / "prometheus"),
    )
    env.update(extra or {})
    return env


def _wait_healthy(server: LiveServer) -> None:
    deadline = time.monotonic() + BOOT_SECONDS
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"explain-service serve exited with {server.proc.returncode}:\n{server.logs()}"
            )
        with contextlib.suppress(OSError, http.client.HTTPException):
            if server.request("GET", "/healthz").status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"explain-service serve did not answer /healthz in {BOOT_SECONDS} s:\n{server.logs()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, STOP_SECONDS)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers the master left behind


@contextlib.contextmanager
def serve_in(
    root: Path, *, workers: int = 1, timeout: int = 60, env: dict[str, str] | None = None
) -> Iterator[LiveServer]:
    """Run ``explain-service serve`` on a free port with everything under ``root``."""
    (root / "var").mkdir(parents=True, exist_ok=True)
    if not (root / "models").exists():
        register_tiny_model(root / "models")
    port = _free_port()
    cmd = [sys.executable, "-m", "explain_service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers), "--timeout", str(timeout)]
    log = root / "server.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            cmd, cwd=root, env=_server_env(root, env), stdout=sink, stderr=sink, start_new_session=True
        )
    server = LiveServer(proc, port, root, log)
    try:
        _wait_healthy(server)
        yield server
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One ``explain-service serve`` (one worker) for the tests of a module."""
    with serve_in(tmp_path_factory.mktemp("live")) as server:
        yield server
