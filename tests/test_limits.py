"""Per-key rate limits in cost units, the daily counterfactual quota, shared through Redis."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from explain_service.access import memory
from explain_service.access.costs import Work, measure
from explain_service.access.memory import WindowMemoryStorage
from explain_service.app import create_app
from tests.conftest import GERMAN_ROW

CHEAP = "/openapi.json"


def make(demo_models_dir: Path, tmp_path: Path, **settings) -> Flask:
    return create_app(
        {
            "models_dir": str(demo_models_dir),
            "database_url": f"sqlite:///{tmp_path}/audit.sqlite3",
            "plots_dir": str(tmp_path / "plots"),
            "eager_load": False,
            "ratelimit_key_prefix": f"test-{uuid.uuid4().hex}",
            **settings,
        }
    )


def limited(
    demo_models_dir: Path, tmp_path: Path, rates: str, name: str
) -> tuple[Flask, Any, dict[str, str]]:
    """An app with the rate limits ``rates``, its test client, and the header of a key called ``name``."""
    app = make(demo_models_dir, tmp_path, ratelimit_default=rates)
    (headers,) = keys(app, name)
    return app, app.test_client(), headers


TWO_UNITS = {"instances": [GERMAN_ROW] * 2, "methods": ["shap"]}  # tree SHAP: one unit per instance


def keys(app: Flask, *names: str) -> list[dict[str, str]]:
    store = app.extensions["explain_access"].keys
    return [{"Authorization": f"Bearer {store.create(n, 'explain')}"} for n in names]


def test_each_key_has_its_own_budget_and_a_breach_is_a_429_json_error(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    app = make(demo_models_dir, tmp_path, ratelimit_default="3/minute")
    client = app.test_client()
    a, b = keys(app, "a", "b")
    assert [client.get(CHEAP, headers=a).status_code for _ in range(4)] == [200, 200, 200, 429]
    r = client.get(CHEAP, headers=a)
    assert r.get_json()["code"] == 429 and r.get_json()["status"] == "Too Many Requests"
    assert 0 < int(r.headers["Retry-After"]) <= 60
    assert client.get(CHEAP, headers=b).status_code == 200
    assert all(client.get("/healthz").status_code == 200 for _ in range(5))


def test_an_empty_limit_disables_limiting(demo_models_dir: Path, tmp_path: Path) -> None:
    app = make(demo_models_dir, tmp_path, ratelimit_default="")
    (a,) = keys(app, "a")
    assert {app.test_client().get(CHEAP, headers=a).status_code for _ in range(10)} == {200}


def test_rate_limit_headers_come_with_a_limit_and_only_then(demo_models_dir: Path, tmp_path: Path) -> None:
    limited = make(demo_models_dir, tmp_path, ratelimit_default="100/minute")
    unlimited = make(demo_models_dir, tmp_path, ratelimit_default="")
    (a,) = keys(limited, "a")
    r = limited.test_client().get(CHEAP, headers=a)
    assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("100", "99")
    assert "Retry-After" not in r.headers
    r = unlimited.test_client().get(CHEAP, headers=a)
    assert r.status_code == 200
    assert not [k for k, _ in r.headers.items() if k.lower().startswith("x-ratelimit") or k == "Retry-After"]


def rate_headers(r) -> tuple[int, int, float]:
    return (
        int(r.headers["X-RateLimit-Limit"]),
        int(r.headers["X-RateLimit-Remaining"]),
        int(r.headers["X-RateLimit-Reset"]) - time.time(),
    )


def test_with_several_limits_the_headers_describe_the_shortest_until_one_refuses(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    _, client, a = limited(demo_models_dir, tmp_path, "5/minute;100/hour", "a")
    seen = []
    for _ in range(3):
        r = client.post("/v1/models/german-credit:explain", json=TWO_UNITS, headers=a)
        limit, remaining, reset_in = rate_headers(r)
        assert 0 < reset_in <= 61
        seen.append((r.status_code, limit, remaining, "Retry-After" in r.headers))
    # 2 + 2 units fit in 5; the next 2 do not, and the refusal spends nothing.
    assert seen == [(200, 5, 3, False), (200, 5, 1, False), (429, 5, 1, True)]
    assert 0 < int(r.headers["Retry-After"]) <= 60
    r = client.get(CHEAP, headers=a)  # 1 unit still fits
    assert (r.status_code, rate_headers(r)[:2], "Retry-After" in r.headers) == (200, (5, 0), False)

    # The longer window refuses first: the headers and Retry-After describe it, not the minute.
    _, client, b = limited(demo_models_dir, tmp_path, "3/hour;10/minute", "b")
    responses = [client.get(CHEAP, headers=b) for _ in range(4)]
    assert [(r.status_code, *rate_headers(r)[:2]) for r in responses] == [
        (200, 10, 9), (200, 10, 8), (200, 10, 7), (429, 3, 0)
    ]  # fmt: skip
    assert 3500 < rate_headers(responses[-1])[2] <= 3601
    assert 3500 < int(responses[-1].headers["Retry-After"]) <= 3600
    assert ["Retry-After" in r.headers for r in responses] == [False, False, False, True]


def test_a_request_one_limit_refuses_spends_nothing_on_the_others(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    app, client, a = limited(demo_models_dir, tmp_path, "10/minute;4/hour", "a")
    statuses = [
        client.post("/v1/models/german-credit:explain", json=TWO_UNITS, headers=a).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]  # the hour is spent after two
    state = app.extensions["explain_limits"]
    minute, hour = state.rates
    left = {str(rate): state.counter.get_window_stats(rate, state.key_prefix, "key:a", "global").remaining
            for rate in (minute, hour)}  # fmt: skip
    assert left == {str(minute): 6, str(hour): 0}  # the refused request did not spend the minute's units


def test_a_request_larger_than_a_whole_limit_is_a_413_naming_the_field(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    app = make(demo_models_dir, tmp_path, ratelimit_default="5/minute", counterfactual_daily_quota=3)
    client = app.test_client()
    (a,) = keys(app, "a")
    url = "/v1/models/german-credit:explain"
    r = client.post(url, json={"instances": [GERMAN_ROW] * 6, "methods": ["shap"]}, headers=a)
    assert r.status_code == 413 and "Retry-After" not in r.headers
    assert list(r.get_json()["errors"]) == ["instances"]
    assert "6 cost units" in r.get_json()["message"] and "5 per 1 minute" in r.get_json()["message"]
    lime = {"instances": [GERMAN_ROW], "methods": ["lime"], "options": {"lime": {"num_samples": 4096}}}
    r = client.post(url, json=lime, headers=a)  # 8 units in one instance: the samples weigh
    assert (r.status_code, list(r.get_json()["errors"])) == (413, ["options.lime.num_samples"])
    r = client.get(CHEAP, headers=a)  # neither refusal spent anything
    assert (r.status_code, r.headers["X-RateLimit-Remaining"]) == (200, "4")

    unlimited = make(demo_models_dir, tmp_path, ratelimit_default="", counterfactual_daily_quota=3)
    (b,) = keys(unlimited, "b")
    cf = {"instances": [GERMAN_ROW] * 4, "methods": ["counterfactual"]}
    r = unlimited.test_client().post(url, json=cf, headers=b)
    assert (r.status_code, list(r.get_json()["errors"])) == (413, ["instances"])
    assert "daily quota of 3 counterfactual instances" in r.get_json()["message"]


def test_an_explain_costs_by_instances_and_methods(demo_models_dir: Path, tmp_path: Path) -> None:
    tree = {"instances": [GERMAN_ROW] * 3, "methods": ["shap"]}
    assert measure(tree, agnostic=False, max_instances=100) == Work(units=3)
    agnostic = {
        "instances": [GERMAN_ROW] * 2,
        "methods": ["shap"],
        "options": {"shap": {"max_evals": 50_000}},
    }
    assert measure(agnostic, agnostic=True, max_instances=100).units == 100
    lime = {
        "instances": [GERMAN_ROW],
        "methods": ["lime"],
        "options": {"lime": {"num_samples": 4096, "stability": 3}},
    }
    assert measure(lime, agnostic=False, max_instances=100) == Work(
        units=24, evaluations=12_288, largest="options.lime.num_samples"
    )
    cf = {"instances": [GERMAN_ROW] * 5, "methods": ["counterfactual", "shap"]}
    assert measure(cf, agnostic=False, max_instances=100) == Work(units=45, counterfactual_instances=5)
    assert measure({"instances": "nope"}, agnostic=None, max_instances=100) == Work()

    app = make(demo_models_dir, tmp_path, ratelimit_default="10/minute")
    client = app.test_client()
    (a,) = keys(app, "a")
    body = {"instances": [GERMAN_ROW] * 4, "methods": ["shap"]}
    statuses = [
        client.post("/v1/models/german-credit:explain", json=body, headers=a).status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 429]  # 4 + 4 units fit in 10; the next 4 do not


def test_counterfactual_instances_have_a_daily_quota(demo_models_dir: Path, tmp_path: Path) -> None:
    app = make(demo_models_dir, tmp_path, ratelimit_default="", counterfactual_daily_quota=3)
    client = app.test_client()
    a, b = keys(app, "a", "b")
    body = {"instances": [GERMAN_ROW] * 2, "methods": ["counterfactual"],
            "options": {"counterfactual": {"count": 1, "time_budget_ms": 50}}}  # fmt: skip
    assert client.post("/v1/models/german-credit:explain", json=body, headers=a).status_code == 200
    refused = client.post("/v1/models/german-credit:explain", json=body, headers=a)
    assert refused.status_code == 429
    assert "daily quota of 3 counterfactual instances" in refused.get_json()["message"]
    assert 0 < int(refused.headers["Retry-After"]) <= 86_400
    shap_only = {"instances": [GERMAN_ROW], "methods": ["shap"]}
    assert client.post("/v1/models/german-credit:explain", json=shap_only, headers=a).status_code == 200
    assert client.post("/v1/models/german-credit:explain", json=body, headers=b).status_code == 200


@pytest.mark.skipif(not os.environ.get("EXPLAIN_TEST_REDIS_URL"), reason="EXPLAIN_TEST_REDIS_URL is not set")
def test_redis_storage_shares_one_budget_between_workers(demo_models_dir: Path, tmp_path: Path) -> None:
    shared = {
        "ratelimit_default": "4/hour",
        "ratelimit_storage_uri": os.environ["EXPLAIN_TEST_REDIS_URL"],
        "ratelimit_key_prefix": f"test-{uuid.uuid4().hex}",
    }
    first_app = make(demo_models_dir, tmp_path, **shared)
    (a,) = keys(first_app, "a")
    second_app = make(demo_models_dir, tmp_path, **shared)
    first, second = first_app.test_client(), second_app.test_client()
    statuses = [c.get(CHEAP, headers=a).status_code for c in (first, second, first, second, first, second)]
    assert statuses == [200, 200, 200, 200, 429, 429]


@pytest.mark.skipif(not os.environ.get("EXPLAIN_TEST_REDIS_URL"), reason="EXPLAIN_TEST_REDIS_URL is not set")
def test_without_a_rate_limit_the_quota_is_still_shared_through_redis(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    shared = {
        "ratelimit_default": "",
        "ratelimit_storage_uri": os.environ["EXPLAIN_TEST_REDIS_URL"],
        "ratelimit_key_prefix": f"test-{uuid.uuid4().hex}",
        "counterfactual_daily_quota": 3,
    }
    first_app = make(demo_models_dir, tmp_path, **shared)
    (a,) = keys(first_app, "a")
    second_app = make(demo_models_dir, tmp_path, **shared)
    # Another deployment on the same Redis (its own prefix) keeps its own quota for a key of that name.
    other_app = make(
        demo_models_dir, tmp_path, **{**shared, "ratelimit_key_prefix": f"test-{uuid.uuid4().hex}"}
    )
    body = {"instances": [GERMAN_ROW] * 2, "methods": ["counterfactual"],
            "options": {"counterfactual": {"count": 1, "time_budget_ms": 50}}}  # fmt: skip
    path = "/v1/models/german-credit:explain"
    assert first_app.test_client().post(path, json=body, headers=a).status_code == 200
    assert second_app.test_client().post(path, json=body, headers=a).status_code == 429
    assert other_app.test_client().post(path, json=body, headers=a).status_code == 200


def test_the_in_process_store_admits_exactly_what_limits_own_memory_store_admits(monkeypatch) -> None:
    """Same hits, same clock: the same answers and window stats as limits' MemoryStorage, no thread."""
    now = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    ours = MovingWindowRateLimiter(WindowMemoryStorage())
    reference = MovingWindowRateLimiter(MemoryStorage())
    threads = threading.active_count()
    item = parse("10/minute")
    rng = random.Random(7)
    for _ in range(400):
        now[0] += rng.choice([0.5, 2.0, 7.0, 13.0])
        key, cost = rng.choice(["a", "b"]), rng.choice([1, 1, 2, 3, 9, 11])
        assert ours.hit(item, key, cost=cost) == reference.hit(item, key, cost=cost)
        assert ours.get_window_stats(item, key) == reference.get_window_stats(item, key)
    assert threading.active_count() == threads  # no expiry thread per hit


def test_the_in_process_store_forgets_idle_keys(monkeypatch) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    store = WindowMemoryStorage()
    limiter = MovingWindowRateLimiter(store)
    for n in range(100):
        assert limiter.hit(parse("5/minute"), f"key{n}")
    now[0] += memory.SWEEP_SECONDS + 61
    assert limiter.hit(parse("5/minute"), "fresh")
    assert store.reset() == 1
