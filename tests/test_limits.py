"""Rate limits answer 429 in the JSON error shape, per worker in memory or shared through Redis."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from explain_service.app import create_app


def make(demo_models_dir: Path, tmp_path: Path, **settings):
    return create_app(
        {
            "models_dir": str(demo_models_dir),
            "database_url": f"sqlite:///{tmp_path}/audit.sqlite3",
            "plots_dir": str(tmp_path / "plots"),
            "eager_load": False,
            **settings,
        }
    )


def test_breach_is_a_429_json_error_and_probes_are_exempt(demo_models_dir: Path, tmp_path: Path) -> None:
    client = make(demo_models_dir, tmp_path, ratelimit_default="3 per minute").test_client()
    statuses = [client.get("/v1/models").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    r = client.get("/v1/models")
    body = r.get_json()
    assert body["code"] == 429 and body["status"] == "Too Many Requests"
    assert int(r.headers["Retry-After"]) > 0
    assert all(client.get("/healthz").status_code == 200 for _ in range(5))


def test_an_empty_limit_disables_limiting(demo_models_dir: Path, tmp_path: Path) -> None:
    client = make(demo_models_dir, tmp_path, ratelimit_default="").test_client()
    assert {client.get("/v1/models").status_code for _ in range(10)} == {200}


@pytest.mark.skipif(not os.environ.get("EXPLAIN_TEST_REDIS_URL"), reason="EXPLAIN_TEST_REDIS_URL is not set")
def test_redis_storage_shares_one_budget_between_workers(demo_models_dir: Path, tmp_path: Path) -> None:
    limit = "4 per hour"
    url = os.environ["EXPLAIN_TEST_REDIS_URL"]
    first_app = make(demo_models_dir, tmp_path, ratelimit_default=limit, ratelimit_storage_uri=url)
    first_app.extensions["explain_limiter"].reset()
    first = first_app.test_client()
    second = make(demo_models_dir, tmp_path, ratelimit_default=limit, ratelimit_storage_uri=url).test_client()
    statuses = [c.get("/v1/models").status_code for c in (first, second, first, second, first, second)]
    assert statuses == [200, 200, 200, 200, 429, 429]
