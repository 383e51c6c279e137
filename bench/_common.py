"""Shared helpers for the benchmarks: timing statistics, a gunicorn server, RESULTS.md sections."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def gunicorn(app_spec: str, *, workers: int = 2, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``app_spec`` under gunicorn on a free loopback port; yields the base URL."""
    port = free_port()
    gunicorn_bin = Path(sys.executable).with_name("gunicorn")
    cmd = [
        str(gunicorn_bin),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--log-level",
        "warning",
    ]
    cmd += ["--config", "python:explain_service.gunicorn_conf", app_spec]
    # Benchmarks measure computing, not the gate, unless they ask for it (bench_access.py does).
    open_access = {"EXPLAIN_AUTH": "off", "EXPLAIN_RATELIMIT_DEFAULT": ""}
    with running(cmd, {**os.environ, **open_access, **(env or {})}, port, "gunicorn") as base:
        yield base


@contextlib.contextmanager
def running(cmd: list[str], env: dict[str, str], port: int, what: str) -> Iterator[str]:
    """Start the server ``cmd`` (listening on ``port``), wait until ``/healthz`` answers 200, stop it
    after; yields the base URL."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # model loading is slow on a busy machine
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not start") from None
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def write_section(title: str, body: str, command: str) -> None:
    """Replace (or append) the ``## title`` section of bench/RESULTS.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    section = f"## {title}\n\nMeasured {stamp} with `{command}` on this 2-core machine.\n\n{body.strip()}\n"
    text = (
        RESULTS.read_text()
        if RESULTS.exists()
        else "# Benchmark results\n\nRatios measured side by side in one run.\n"
    )
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)


def load_note(before: float) -> str:
    """The machine's load average before and after a run: how much other work shared the cores."""
    after = os.getloadavg()[0]
    return (
        f"Load average (1 min) on the 2 cores: {before:.1f} before the run, {after:.1f} after; other jobs "
        "shared the machine, so absolute times are inflated and only the interleaved ratios compare."
    )
