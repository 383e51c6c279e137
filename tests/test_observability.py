"""Structured log lines (schema, request ids, nothing personal) and the metrics an admin key scrapes."""

from __future__ import annotations

import io
import logging
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from explain_service.access.keys import KeyStore
from explain_service.app import create_app
from explain_service.audit import AuditEntry, AuditStore
from explain_service.logs import REQUEST_FIELDS, RequestIdFilter, json_formatter
from tests._gunicorn import serve_in
from tests.conftest import GERMAN_ROW

EXPLAIN = "/v1/models/german-credit:explain"
# A value no log line may show: feature values are personal data.
MARKED_ROW = {**GERMAN_ROW, "credit_amount": 98765, "purpose": "vacation/others"}
BASE_FIELDS = {"timestamp", "level", "logger", "pid", "message"}


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The service's log lines as JSON text, whatever the test runner configured."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestIdFilter())
    ours = logging.getLogger("explain_service")
    level = ours.level
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        ours.removeHandler(handler)
        ours.setLevel(level)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.fixture
def served(demo_models_dir: Path, tmp_path: Path) -> tuple[Flask, Any, dict[str, str]]:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(demo_models_dir / "german-credit", models / "german-credit")
    # A copy under another name: its manifest names german-credit, so it fails to load.
    shutil.copytree(demo_models_dir / "german-credit", models / "gc-copy")
    app = create_app(
        {
            "models_dir": str(models),
            "database_url": f"sqlite:///{tmp_path}/audit.sqlite3",
            "plots_dir": str(tmp_path / "plots"),
            "ratelimit_default": "60/minute",
            "eager_load": False,
        }
    )
    store = app.extensions["explain_access"].keys
    keys = {name: store.create(name, role) for name, role in [("caller", "explain"), ("ops", "admin")]}
    headers = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
    return app, app.test_client(), headers


def test_the_request_line_has_every_field_and_no_feature_value(served, log_lines: io.StringIO) -> None:
    app, client, headers = served
    body = {"instances": [MARKED_ROW], "methods": ["shap"]}
    r = client.post(EXPLAIN, json=body, headers={**headers["caller"], "X-Request-ID": "trace-abc"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "trace-abc"
    answer = r.get_json()
    record = app.extensions["explain"].audit.get(answer["explanations"][0]["id"])
    generated = client.post(EXPLAIN, json=body, headers=headers["caller"])
    refused = client.post(
        EXPLAIN, json={"instances": [{**MARKED_ROW, "age": "old-98765"}]}, headers=headers["caller"]
    )
    assert refused.status_code == 422

    lines = parsed(log_lines)
    assert lines and all(set(line) >= BASE_FIELDS for line in lines)
    requests = [line for line in lines if line["logger"] == "explain_service.request"]
    assert len(requests) == 3 and all(set(REQUEST_FIELDS) <= set(line) for line in requests)
    first, second, third = requests
    assert first["request_id"] == "trace-abc"
    assert {
        k: first[k] for k in ("route", "http_method", "status", "model", "version", "methods", "caller")
    } == {
        "route": "/v1/models/<name>:explain",
        "http_method": "POST",
        "status": 200,
        "model": "german-credit",
        "version": answer["model"]["version"],
        "methods": ["shap"],
        "caller": "caller",
    }
    assert record is not None and first["audit_seq"] == record.seq
    assert second["audit_seq"] == record.seq + 1
    assert 0 < first["duration_ms"] < 60_000 and first["level"] == "INFO"
    assert second["request_id"] == generated.headers["X-Request-ID"] and len(second["request_id"]) == 32
    assert (third["status"], third["audit_seq"], third["model"]) == (422, None, "german-credit")
    text = log_lines.getvalue()
    for secret in ("98765", "vacation", *[h["Authorization"].split()[1] for h in headers.values()]):
        assert secret not in text, secret


def _scrape(client: Any, headers: dict[str, str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.get_data(as_text=True))
        for s in family.samples
    }


def _delta(after: dict, before: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return float(after.get(key, 0.0) - before.get(key, 0.0))


def test_metrics_follow_requests_audit_quality_limits_and_load_failures(served) -> None:
    app, client, headers = served
    assert client.get("/metrics", headers=headers["caller"]).status_code == 403
    before = _scrape(client, headers["ops"])
    body = {
        "instances": [MARKED_ROW],
        "methods": ["shap", "lime", "counterfactual"],
        "options": {"counterfactual": {"count": 2}},
    }
    r = client.post(EXPLAIN, json=body, headers=headers["caller"])
    assert r.status_code == 200, r.get_json()
    explanation = r.get_json()["explanations"][0]
    assert (
        client.post("/v1/models/no-such-99:explain", json=body, headers=headers["caller"]).status_code == 404
    )
    assert client.get("/v1/models/gc-copy", headers=headers["caller"]).status_code == 503
    after = _scrape(client, headers["ops"])

    route = "/v1/models/<name>:explain"
    methods = "counterfactual+lime+shap"
    labels = {"route": route, "model": "german-credit", "methods": methods}
    assert _delta(after, before, "explain_request_duration_seconds_count", **labels) == 1
    assert (
        _delta(
            after,
            before,
            "explain_request_duration_seconds_count",
            route=route,
            model="other",
            methods="-",  # refused before its methods were read
        )
        == 1
    )
    assert not any("no-such-99" in str(key) for key in after)
    assert _delta(after, before, "explain_audit_append_seconds_count") == 1
    assert _delta(after, before, "explain_audit_append_records_sum") == 1
    assert after[("explain_audit_chain_head_seq", ())] == app.extensions["explain"].audit.head()[0]
    url = app.extensions["explain"].audit.url.render_as_string(hide_password=False)
    with AuditStore(url) as outside:  # as a batch job or another host appends
        note = AuditEntry({"kind": "note"}, "german-credit", "1", "ab" * 32)
        appended = outside.append([note, note])[-1].seq
    assert _scrape(client, headers["ops"])[("explain_audit_chain_head_seq", ())] == appended
    residual = abs(explanation["shap"]["additivity_residual"])
    assert math.isclose(
        _delta(after, before, "explain_shap_additivity_residual_sum", model="german-credit"),
        residual,
        abs_tol=1e-12,
    )
    assert math.isclose(
        _delta(after, before, "explain_lime_score_sum", model="german-credit"), explanation["lime"]["score"]
    )
    cf = explanation["counterfactual"]
    valid = round(len(cf["counterfactuals"]) * cf["metrics"]["validity"])
    assert (
        _delta(after, before, "explain_counterfactuals_total", model="german-credit", valid="true") == valid
    )
    searches = sum(
        _delta(after, before, "explain_counterfactual_searches_total", model="german-credit", outcome=o)
        for o in ("complete", "budget_exhausted")
    )
    assert searches == 1
    assert _delta(after, before, "explain_model_load_failures_total", model="gc-copy") == 1

    statuses = []
    while not statuses or statuses[-1] != 429:
        statuses.append(client.get("/openapi.json", headers=headers["caller"]).status_code)
        assert len(statuses) <= 60
    limited = _scrape(client, headers["ops"])
    assert _delta(limited, after, "explain_rate_limited_total", kind="rate") == 1


@pytest.mark.slow
def test_gunicorn_access_lines_share_the_schema_and_metrics_aggregate_workers(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    store = KeyStore(f"sqlite:///{tmp_path / 'var' / 'audit.sqlite3'}")
    caller, ops = store.create("caller", "explain"), store.create("ops", "admin")
    store.close()
    env = {"EXPLAIN_AUTH": "required", "EXPLAIN_ACCESS_LOG": "1"}
    with serve_in(tmp_path, workers=2, env=env) as server:
        auth = {"Authorization": f"Bearer {caller}", "Content-Type": "application/json"}
        body = orjson.dumps({"instances": [{"x1": 0.123456789, "x2": -1.5}], "methods": ["shap"]})
        first = server.request("POST", "/v1/models/tiny:explain", body, {**auth, "X-Request-ID": "gun-1"})
        assert first.status == 200 and first.headers["x-request-id"] == "gun-1"
        for _ in range(3):
            assert server.request("POST", "/v1/models/tiny:explain", body, auth).status == 200
        server.raw(b"GARBAGE\r\n\r\n")  # refused by gunicorn before the app
        metrics = server.request("GET", "/metrics", headers={"Authorization": f"Bearer {ops}"})
        deadline = time.monotonic() + 10
        while "refused request" not in server.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        text = server.logs()
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    assert all(set(line) >= BASE_FIELDS for line in lines)
    access = [line for line in lines if line["logger"] == "gunicorn.access"]
    assert all(set(REQUEST_FIELDS) <= set(line) for line in access)
    (mine,) = [line for line in access if line["request_id"] == "gun-1"]
    assert (mine["route"], mine["model"], mine["version"], mine["methods"]) == (
        "/v1/models/<name>:explain",
        "tiny",
        orjson.loads(first.body)["model"]["version"],
        ["shap"],
    )
    assert (mine["status"], mine["caller"], mine["http_method"]) == (200, "caller", "POST")
    assert isinstance(mine["audit_seq"], int) and mine["duration_ms"] > 0
    refusal = [line for line in lines if line["logger"] == "gunicorn.error" and "refused" in line["message"]]
    assert refusal and refusal[0]["level"] == "WARNING"  # gunicorn's own lines are JSON too
    for secret in ("0.123456789", caller, ops):
        assert secret not in text

    assert metrics.status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.body.decode())
        for s in family.samples
    }
    explain_labels = (("methods", "shap"), ("model", "tiny"), ("route", "/v1/models/<name>:explain"))
    assert samples[("explain_request_duration_seconds_count", explain_labels)] == 4  # both workers' counts
    assert samples[("explain_audit_append_seconds_count", ())] == 4
    assert samples[("explain_audit_chain_head_seq", ())] >= 4
