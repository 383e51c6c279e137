"""Several hosts: two ``explain-service serve`` instances sharing one PostgreSQL, one Redis, one models dir.

A client alternates between the two as a load balancer would. Specified here:

* every explanation, whichever host answered it, lands in one hash chain that ``audit verify`` walks
  unbroken, and each host reads the records the other wrote;
* a key's rate limit is one budget across both hosts (Redis), not one per host;
* a model version registered into the shared models directory is served by both hosts within a
  bounded time, while a client keeps calling, without a failed request.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression

from explain_service.access.commands import key_store
from explain_service.cli import main
from explain_service.registry.store import register_model
from tests._gunicorn import TINY_MODEL, LiveServer, register_tiny_model, serve_in
from tests.conftest import throwaway_pg_schema

PG = os.environ.get("EXPLAIN_TEST_DATABASE_URL")
REDIS = os.environ.get("EXPLAIN_TEST_REDIS_URL")
LIMIT = 60  # units per key per minute, on both hosts together
NEW_VERSION_BOUND_SECONDS = 5.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not PG or not REDIS, reason="EXPLAIN_TEST_DATABASE_URL and EXPLAIN_TEST_REDIS_URL"),
]


@dataclass
class Cluster:
    """Two hosts behind an imaginary load balancer, their shared stores and one key per test."""

    hosts: tuple[LiveServer, LiveServer]
    database_url: str
    models_dir: Path

    def key(self, name: str) -> str:
        store = key_store(self.database_url)
        try:
            return store.create(name, "explain", by="test")
        finally:
            store.close()


def _post(host: LiveServer, key: str, path: str, body: dict) -> tuple[int, dict]:
    answer = host.request(
        "POST",
        path,
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    return answer.status, json.loads(answer.body)


@pytest.fixture(scope="module")
def pg_schema_url() -> Iterator[str]:
    """A throwaway PostgreSQL schema shared by the module's two hosts."""
    assert PG is not None
    with throwaway_pg_schema(PG, "multihost") as url:
        yield url


@pytest.fixture(scope="module")
def cluster(pg_schema_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    shared = tmp_path_factory.mktemp("shared")
    register_tiny_model(shared / "models")
    env = {
        "EXPLAIN_MODELS_DIR": str(shared / "models"),
        "EXPLAIN_DATABASE_URL": pg_schema_url,
        "EXPLAIN_AUTH": "required",
        "EXPLAIN_RATELIMIT_DEFAULT": f"{LIMIT}/minute",
        "EXPLAIN_RATELIMIT_STORAGE_URI": str(REDIS),
        "EXPLAIN_RATELIMIT_KEY_PREFIX": f"multihost-{uuid.uuid4().hex}",
    }
    roots = [tmp_path_factory.mktemp(f"host{k}") for k in (1, 2)]
    for root in roots:
        (root / "models").mkdir()  # each host's own directory stays empty: models come from the shared one
    with serve_in(roots[0], env=env) as first, serve_in(roots[1], env=env) as second:
        yield Cluster((first, second), pg_schema_url, shared / "models")


def test_one_unbroken_chain_across_hosts(cluster: Cluster) -> None:
    key = cluster.key("chain-client")
    ids = []
    for i in range(20):
        host = cluster.hosts[i % 2]
        status, answer = _post(
            host, key, f"/v1/models/{TINY_MODEL}:explain", {"instances": [{"x1": 0.1 * i, "x2": -0.3}]}
        )
        assert status == 200, answer
        ids.append(answer["explanations"][0]["id"])
    assert len(set(ids)) == 20
    # Each host reads what the other wrote: one store, not two.
    for i, record_id in enumerate(ids):
        other = cluster.hosts[(i + 1) % 2]
        got = other.request(
            "GET", f"/v1/explanations/{record_id}", headers={"Authorization": f"Bearer {key}"}
        )
        assert got.status == 200, got.body
    result = CliRunner().invoke(main, ["audit", "verify", "--database-url", cluster.database_url])
    assert result.exit_code == 0, result.output
    checked = int(result.output.split("ok: ", 1)[1].split(" records", 1)[0])
    assert checked >= 20  # the explanations plus the key and access records, in one chain


def test_rate_limit_is_one_budget_across_hosts(cluster: Cluster) -> None:
    key = cluster.key("limited-client")
    statuses: list[tuple[int, int]] = []
    for i in range(LIMIT + 20):
        host = i % 2
        status, _ = _post(
            cluster.hosts[host],
            key,
            f"/v1/models/{TINY_MODEL}:predict",
            {"instances": [{"x1": 1.0, "x2": 0.0}]},
        )
        statuses.append((host, status))
    ok = [h for h, s in statuses if s == 200]
    refused = [h for h, s in statuses if s == 429]
    assert len(ok) == LIMIT  # per host, each would have admitted LIMIT on its own
    assert len(refused) == 20
    assert set(refused) == {0, 1}


def test_new_version_is_served_by_both_hosts_without_a_failed_request(cluster: Cluster) -> None:
    key = cluster.key("watching-client")
    seen: list[tuple[int, int, str | None, float]] = []  # host, status, version, time
    stop = threading.Event()

    def client() -> None:
        i = 0
        while not stop.is_set():
            host = i % 2
            status, answer = _post(
                cluster.hosts[host],
                key,
                f"/v1/models/{TINY_MODEL}:explain",
                {"instances": [{"x1": 0.5, "x2": 0.5}]},
            )
            version = answer.get("model", {}).get("version") if status == 200 else None
            seen.append((host, status, version, time.monotonic()))
            i += 1
            time.sleep(0.08)  # under LIMIT units a minute for the bounded wait

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(0.5)
        rng = np.random.default_rng(1)
        frame = pd.DataFrame({"x1": rng.normal(size=200), "x2": rng.normal(size=200)})
        labels = np.where(frame["x1"] - frame["x2"] > 0, "yes", "no")
        register_model(
            LogisticRegression().fit(frame, labels),
            TINY_MODEL,
            "2",
            background=frame.iloc[:50],
            models_dir=cluster.models_dir,
            favorable="yes",
        )
        registered = time.monotonic()
        deadline = registered + NEW_VERSION_BOUND_SECONDS
        while time.monotonic() < deadline:
            if {h for h, _, v, t in list(seen) if v == "2" and t >= registered} == {0, 1}:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert [s for _, s, _, _ in seen if s != 200] == []
    first_new = {h: min(t for hh, _, v, t in seen if hh == h and v == "2") for h in (0, 1) if any(
        hh == h and v == "2" for hh, _, v, _ in seen)}  # fmt: skip
    assert set(first_new) == {0, 1}, (
        f"version 2 not served by both hosts within {NEW_VERSION_BOUND_SECONDS} s"
    )
    assert max(first_new.values()) - registered <= NEW_VERSION_BOUND_SECONDS
    assert any(v == "1" for _, _, v, _ in seen)  # the old version served until the new one arrived
