"""A real gunicorn boots with one corrupted model and keeps serving the others."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from explain_service.registry import register_model

pytestmark = pytest.mark.slow

BOOT_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(base: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, orjson.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


@pytest.fixture
def two_models(tmp_path: Path) -> tuple[Path, Any]:
    """``good`` and ``bad`` (one flipped byte in its estimator), and ``good``'s fitted estimator."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    y = (X.a + X.b > 0).astype(int).to_numpy()
    estimator = LogisticRegression().fit(X, y)
    root = tmp_path / "models"
    for name in ("good", "bad"):
        register_model(estimator, name, "1", background=X, models_dir=root)
    artifact = root / "bad" / "1" / "estimator.skops"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    return root, estimator


@pytest.fixture
def server(two_models: tuple[Path, Any], tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    root, _ = two_models
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "EXPLAIN_MODELS_DIR": str(root),
        "EXPLAIN_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'audit.sqlite3'}",
        "EXPLAIN_PLOTS_DIR": str(tmp_path / "var" / "plots"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "var" / "prometheus"),
        "EXPLAIN_AUTH": "off",
        "EXPLAIN_RATELIMIT_DEFAULT": "",
    }
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "explain_service.cli", "serve", "--port", str(port), "--workers", "2"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + BOOT_SECONDS
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if _call(base, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer in time"
            time.sleep(0.5)
        yield base, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def test_gunicorn_serves_the_healthy_model_and_reports_the_corrupted_one(
    server: tuple[str, subprocess.Popen[bytes]], two_models: tuple[Path, Any]
) -> None:
    base, proc = server
    _, estimator = two_models
    row = {"a": 0.3, "b": -1.2}

    for _ in range(4):  # a few calls, so both workers answer
        status, body = _call(base, "/v1/models/good:predict", {"instances": [row]})
        assert status == 200, body
        expected = estimator.predict_proba(pd.DataFrame([row]))[0, 1]
        assert body["predictions"][0]["probabilities"]["1"] == pytest.approx(expected, abs=1e-12)

        status, body = _call(base, "/v1/models/bad:predict", {"instances": [row]})
        assert status == 503 and "model_unavailable" in body["message"]

    status, body = _call(base, "/readyz")
    assert status == 503
    assert [(u["name"], u["version"]) for u in body["unavailable"]] == [("bad", "1")]
    assert "estimator.skops" in body["unavailable"][0]["reason"]

    status, body = _call(base, "/v1/models")
    assert status == 200
    marks = {m["name"]: m["version_status"][0]["status"] for m in body["models"]}
    assert marks == {"bad": "unavailable", "good": "available"}
    assert proc.poll() is None
