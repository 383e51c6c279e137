"""Over real gunicorn with four workers and Redis: one per-key budget, revocation everywhere, no banner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from explain_service.access.keys import KeyStore

ROOT = Path(__file__).resolve().parent.parent
REDIS = os.environ.get("EXPLAIN_TEST_REDIS_URL")
LIMIT = 40

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REDIS, reason="EXPLAIN_TEST_REDIS_URL is not set"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(demo_models_dir: Path, tmp_path: Path) -> Iterator[tuple[int, str]]:
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    port = _free_port()
    env = {
        **os.environ,
        "EXPLAIN_MODELS_DIR": str(demo_models_dir),
        "EXPLAIN_DATABASE_URL": url,
        "EXPLAIN_PLOTS_DIR": str(tmp_path / "plots"),
        "EXPLAIN_EAGER_LOAD": "false",
        "EXPLAIN_RATELIMIT_DEFAULT": f"{LIMIT}/minute",
        "EXPLAIN_RATELIMIT_STORAGE_URI": str(REDIS),
        "EXPLAIN_RATELIMIT_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
    }
    gunicorn = Path(sys.executable).with_name("gunicorn")
    args = [str(gunicorn), "-b", f"127.0.0.1:{port}", "-w", "4", "--log-level", "warning",
            "--config", "python:explain_service.gunicorn_conf", "explain_service.app:create_app()"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, env=env)
    try:
        ready_by = time.monotonic() + 300  # four workers importing shap on a busy machine
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > ready_by:
                    raise RuntimeError("gunicorn did not start") from None
                time.sleep(0.2)
        yield port, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get(port: int, key: str | None, path: str = "/v1/models/none") -> tuple[int, dict[str, str]]:
    """GET on a new connection (so requests spread over the workers); status and headers."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_one_budget_per_key_across_workers_and_revocation_everywhere_within_two_seconds(served) -> None:
    port, url = served
    store = KeyStore(url)
    limited, revoked = store.create("limited", "explain"), store.create("revoked", "explain")

    # A 404 for an unknown model still spends one unit: the limit counts requests, not successes.
    statuses = [get(port, limited)[0] for _ in range(int(LIMIT * 1.5))]
    admitted = sum(s != 429 for s in statuses)
    assert LIMIT <= admitted <= 1.05 * LIMIT, statuses
    assert set(statuses) == {404, 429}

    status, headers = get(port, None, "/healthz")
    assert status == 200 and "Server" not in headers and headers["X-Content-Type-Options"] == "nosniff"

    for _ in range(24):  # every worker has the key cached
        assert get(port, revoked, "/healthz")[0] == 200 and get(port, revoked, "/v1/models/x")[0] == 404
    store.revoke("revoked", by="test")
    revoked_at = time.monotonic()
    last_admitted = 0.0
    while time.monotonic() - revoked_at < 3.0:
        if get(port, revoked)[0] != 401:
            last_admitted = time.monotonic() - revoked_at
    assert last_admitted < 2.0
