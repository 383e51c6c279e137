"""The stop button over real gunicorn with several workers: every worker obeys within 2 seconds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._gunicorn import ROOT, TINY_MODEL, LiveServer, serve_in

pytestmark = pytest.mark.slow

OBEY_SECONDS = 2.0
BODY = json.dumps({"instances": [{"x1": 0.3, "x2": -1.0}]}).encode()
JSON = {"Content-Type": "application/json"}


def statuses_for(server: LiveServer, seconds: float) -> list[tuple[float, int]]:
    """(seconds since start, status) of back-to-back :predict requests, each on a new connection."""
    start, seen = time.monotonic(), []
    while (elapsed := time.monotonic() - start) < seconds:
        seen.append((elapsed, server.request("POST", f"/v1/models/{TINY_MODEL}:predict", BODY, JSON).status))
    return seen


def cli(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "explain_service.cli", "models", *args]
    cmd += ["--database-url", f"sqlite:///{server.root / 'var' / 'audit.sqlite3'}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_every_worker_obeys_a_suspension_and_a_resumption_within_two_seconds(tmp_path: Path) -> None:
    with serve_in(tmp_path, workers=3) as server:
        warm = statuses_for(server, 1.0)  # every worker loads the model and caches "not suspended"
        assert {status for _, status in warm} == {200}
        done = cli(
            server, "suspend", TINY_MODEL, "--reason", "incident 7", "--models-dir", str(tmp_path / "models")
        )
        assert done.returncode == 0, done.stderr
        seen = statuses_for(server, OBEY_SECONDS + 1.0)
        late = [(t, s) for t, s in seen if t >= OBEY_SECONDS and s != 503]
        assert not late, late
        assert len([t for t, _ in seen if t >= OBEY_SECONDS]) >= 5  # enough requests to reach every worker
        answer = server.request("POST", f"/v1/models/{TINY_MODEL}:explain", BODY, JSON)
        assert answer.status == 503 and b"incident 7" in answer.body
        described = json.loads(server.request("GET", f"/v1/models/{TINY_MODEL}").body)
        assert described["suspension"]["reason"] == "incident 7"

        # Resumed over HTTP on whichever worker answers; the others follow within the same bound.
        resumed = server.request("POST", f"/v1/models/{TINY_MODEL}:resume", b"{}", JSON)
        assert resumed.status == 200, resumed.body
        seen = statuses_for(server, OBEY_SECONDS + 1.0)
        late = [(t, s) for t, s in seen if t >= OBEY_SECONDS and s != 200]
        assert not late, late
    verify = subprocess.run(
        [sys.executable, "-m", "explain_service.cli", "audit", "verify", "--database-url",
         f"sqlite:///{tmp_path / 'var' / 'audit.sqlite3'}"],
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
