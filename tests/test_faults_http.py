"""Hostile HTTP against a real gunicorn: every answer is the JSON error shape, nothing redirects, nothing leaks.

Most tests send raw bytes to ``explain-service serve`` on a free port (``live_server``); a few
check the same rule on the Flask test client, where a failure is cheaper to read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from explain_service.api.health import REQUESTS
from explain_service.logs import json_formatter
from tests._gunicorn import ROOT, TINY_MODEL, Answer, LiveServer, parse_raw, serve_in

pytestmark = pytest.mark.slow

ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
TINY_ROW = {"x1": 0.5, "x2": -1.0}
DEAD_POSTGRES = "postgresql+psycopg://auditor:s3cret@127.0.0.1:9/ledger_db"


def assert_json_error(answer: Answer, status: int) -> dict:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    body = orjson.loads(answer.body)
    assert body["code"] == status and isinstance(body["status"], str) and isinstance(body["message"], str)
    return body


def raw_get(server: LiveServer, target: bytes, headers: bytes = b"Host: localhost\r\n") -> Answer:
    return parse_raw(server.raw(b"GET " + target + b" HTTP/1.1\r\n" + headers + b"\r\n"))


# --- gunicorn's own refusals -------------------------------------------------------------


def test_over_long_request_line_is_a_json_414(live_server: LiveServer) -> None:
    body = assert_json_error(raw_get(live_server, b"/v1/models/" + b"a" * 5000), 414)
    assert "request line" in body["message"]


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GARBAGE\r\n", id="no-method-or-version"),
        pytest.param(b"GET /healthz HTTP/9.9\r\nHost: x\r\n", id="bad-version"),
        pytest.param(b"G\x00T /healthz HTTP/1.1\r\nHost: x\r\n", id="nul-in-method"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n", id="space-in-header-name"),
    ],
)
def test_malformed_requests_are_json_400(live_server: LiveServer, head: bytes) -> None:
    assert_json_error(parse_raw(live_server.raw(head + b"\r\n")), 400)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(b"".join(b"X-H%d: 1\r\n" % i for i in range(150)), id="150-fields"),
        pytest.param(b"X-Big: " + b"a" * 9000 + b"\r\n", id="9000-byte-field"),
    ],
)
def test_oversized_headers_are_a_json_431(live_server: LiveServer, headers: bytes) -> None:
    assert_json_error(raw_get(live_server, b"/healthz", b"Host: x\r\n" + headers), 431)


# --- routing: no redirects, verbs answer 405 ---------------------------------------------


@pytest.mark.parametrize(
    "target",
    [b"/v1/models/tiny/versions//x", b"//v1/models", b"/v1//models/tiny", b"/v1/models/", b"/healthz/"],
)
def test_no_path_redirects_to_the_host_header(live_server: LiveServer, target: bytes) -> None:
    answer = raw_get(live_server, target, b"Host: evil.example.com\r\n")
    assert answer.status in (200, 404), answer
    assert "location" not in answer.headers
    assert b"evil.example.com" not in answer.body


def test_every_get_rule_answers_doubled_and_trailing_slashes_without_a_redirect(app, client) -> None:
    checked = 0
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or ()):
            continue
        path = re.sub(r"<[^>]+>", "x", rule.rule)
        # (a leading "//" would read as a host name to the test client; the raw-socket test sends it)
        for variant in (path.replace("/", "//").replace("//", "/", 1), path + "/", path + "//"):
            r = client.get(variant, headers={"Host": "evil.example.com"})
            assert r.status_code < 300 or r.status_code >= 400, (variant, r.status_code)
            assert "Location" not in r.headers, variant
            checked += 1
    assert checked >= 3 * 8


@pytest.mark.parametrize("verb", ["explain", "predict"])
def test_get_on_a_verb_route_is_a_json_405_with_allow(live_server: LiveServer, client, verb: str) -> None:
    for answer in (
        live_server.request("GET", f"/v1/models/{TINY_MODEL}:{verb}"),
        live_server.request("GET", f"/v1/models/{TINY_MODEL}/versions/1:{verb}"),
    ):
        assert_json_error(answer, 405)
        assert "POST" in answer.headers["allow"]
    r = client.get(f"/v1/models/german-credit:{verb}")
    assert r.status_code == 405 and "POST" in r.headers["Allow"] and r.get_json()["code"] == 405


def test_verb_routes_and_model_routes_still_answer(live_server: LiveServer) -> None:
    described = live_server.request("GET", f"/v1/models/{TINY_MODEL}")
    assert described.status == 200 and orjson.loads(described.body)["name"] == TINY_MODEL
    body = orjson.dumps({"instances": [TINY_ROW]})
    predicted = live_server.request(
        "POST", f"/v1/models/{TINY_MODEL}:predict", body, {"Content-Type": "application/json"}
    )
    assert predicted.status == 200, predicted
    assert orjson.loads(predicted.body)["predictions"][0]["label"] in ("yes", "no")


# --- metrics ---------------------------------------------------------------------------


def _series() -> set[tuple[str, str, str]]:
    return {
        (s.labels["endpoint"], s.labels["method"], s.labels["status"])
        for metric in REQUESTS.collect()
        for s in metric.samples
        if s.name == "explain_requests_total"
    }


def test_made_up_methods_and_paths_add_no_metric_series(client) -> None:
    client.get("/v1/models/german-credit")
    before = _series()
    for i in range(60):
        client.open("/v1/models", method=f"MADEUP{i}")
        client.get(f"/no/such/path/{i}")
    added = _series() - before
    assert added <= {("unmatched", "other", "405"), ("unmatched", "GET", "404")}, added
    assert ("/v1/models/<name>", "GET", "200") in before


def test_live_metrics_label_routes_not_raw_paths(live_server: LiveServer) -> None:
    for i in range(30):
        method = b"BREW" + bytes([65 + i // 26, 65 + i % 26])
        live_server.raw(method + b" /v1/models/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
    live_server.request("GET", f"/v1/models/{TINY_MODEL}")
    text = live_server.request("GET", "/metrics").body.decode()
    lines = [line for line in text.splitlines() if line.startswith("explain_requests_total{")]
    assert any('endpoint="/v1/models/<name>"' in line and 'method="GET"' in line for line in lines)
    assert not any("BREW" in line for line in lines)
    assert not re.search(r'endpoint="/v1/models/\d+"', text)
    assert len(lines) < 12, lines


# --- conditional requests --------------------------------------------------------------


def test_if_none_match_star_and_weak_etags_give_304_for_an_existing_plot(live_server: LiveServer) -> None:
    body = orjson.dumps({"instances": [TINY_ROW], "methods": ["shap"]})
    answer = live_server.request(
        "POST", f"/v1/models/{TINY_MODEL}:explain", body, {"Content-Type": "application/json"}
    )
    assert answer.status == 200, answer
    url = orjson.loads(answer.body)["explanations"][0]["plots"]["shap_waterfall"]
    first = live_server.request("GET", url)
    assert first.status == 200 and first.body.startswith(b"\x89PNG")
    etag = first.headers["etag"]
    for condition in ("*", etag, f"W/{etag}", f'"other", {etag}'):
        cached = live_server.request("GET", url, headers={"If-None-Match": condition})
        assert cached.status == 304 and cached.body == b"" and cached.headers["etag"] == etag, condition
    assert live_server.request("GET", url, headers={"If-None-Match": '"other"'}).status == 200
    missing = live_server.request(
        "GET", "/v1/explanations/nope/plots/shap_waterfall.png", headers={"If-None-Match": "*"}
    )
    assert_json_error(missing, 404)


# --- no details in 5xx bodies; ISO timestamps in the log -------------------------------


def test_an_unexpected_exception_is_a_generic_500_logged_with_its_request_id(
    app, client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    registry = app.extensions["explain"].registry

    def explode(*_args, **_kwargs):
        raise RuntimeError(f"cannot open {Path('/srv/secret/models/x.ubj').resolve()} on db.internal:5432")

    monkeypatch.setattr(registry, "get", explode)
    with caplog.at_level(logging.ERROR, logger="explain_service"):
        r = client.get("/v1/models/german-credit", headers={"X-Request-ID": "trace-42"})
    body = r.get_json()
    assert r.status_code == 500 and body["code"] == 500
    assert "/srv/secret" not in r.get_data(as_text=True) and "5432" not in r.get_data(as_text=True)
    assert "trace-42" in body["message"] and r.headers["X-Request-ID"] == "trace-42"
    logged = "\n".join(rec.getMessage() + (rec.exc_text or "") for rec in caplog.records)
    assert "trace-42" in logged and "/srv/secret" in caplog.text


def test_a_registry_error_names_no_path_in_its_answer(app, client, monkeypatch: pytest.MonkeyPatch) -> None:
    from explain_service.errors import IntegrityError

    def refuse(*_args, **_kwargs):
        raise IntegrityError("/srv/models/german-credit/1/estimator.ubj", "sha256 does not match")

    monkeypatch.setattr(app.extensions["explain"].registry, "get", refuse)
    r = client.get("/v1/models/german-credit", headers={"X-Request-ID": "bad id with spaces"})
    assert r.status_code == 500
    assert "/srv/models" not in r.get_data(as_text=True)
    assert r.get_json()["message"].startswith("The model's files do not match their recorded hashes.")
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])


def test_the_json_formatter_stamps_utc_time_and_names_level_logger_and_pid() -> None:
    record = logging.LogRecord("explain_service.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    record.created = 1_700_000_000.25
    line = orjson.loads(json_formatter().format(record))
    assert line["timestamp"] == "2023-11-14T22:13:20.250+00:00"
    assert (line["level"], line["logger"], line["message"]) == ("INFO", "explain_service.x", "hello there")
    assert line["pid"] == record.process


@pytest.mark.parametrize(("loglevel", "access_log"), [("warning", False), ("debug", True)])
def test_the_log_config_keeps_gunicorns_log_level_and_access_switch(loglevel: str, access_log: bool) -> None:
    # in a subprocess: applying a log config here would replace the test runner's handlers
    script = (
        "import logging, sys\n"
        "from gunicorn.config import Config\n"
        "from gunicorn.glogging import Logger\n"
        "from explain_service.logs import gunicorn_logconfig\n"
        "cfg = Config()\n"
        f"cfg.set('loglevel', {loglevel!r})\n"
        f"cfg.set('logconfig_dict', gunicorn_logconfig(access_log={access_log}))\n"
        "Logger(cfg)\n"
        "print(logging.getLogger('gunicorn.error').level, logging.getLogger('gunicorn.access').level)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60, env=env
    )
    error_level, access_level = map(int, out.stdout.split())
    assert error_level == logging.getLevelName(loglevel.upper())
    assert access_level == (logging.INFO if access_log else logging.WARNING)


def test_every_live_log_line_is_one_json_object_with_a_timestamp(live_server: LiveServer) -> None:
    live_server.raw(b"GARBAGE\r\n\r\n")  # gunicorn logs a warning from the worker
    deadline = time.monotonic() + 10
    while "refused request" not in live_server.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [orjson.loads(line) for line in live_server.logs().splitlines() if line.strip()]
    assert any(ln["logger"] == "gunicorn.error" and "Booting worker" in ln["message"] for ln in lines)
    assert any(
        ln["logger"] == "explain_service.cli" and "explain-service on" in ln["message"] for ln in lines
    )
    undated = [ln for ln in lines if not ISO_TIME.match(ln.get("timestamp", ""))]
    assert not undated, undated


# --- a short worker timeout and an unreachable audit database --------------------------


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("", id="threaded"),  # serve's default worker
        pytest.param(" --worker-class explain_service.gunicorn_worker.JsonErrorWorker", id="sync"),
    ],
)
def fragile_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A 3 s worker timeout (the app preloaded, so booting does not count) and a dead PostgreSQL."""
    env = {"GUNICORN_CMD_ARGS": "--preload" + request.param, "EXPLAIN_DATABASE_URL": DEAD_POSTGRES}
    with serve_in(tmp_path_factory.mktemp("fragile"), timeout=3, env=env) as server:
        yield server


def test_a_request_stopped_at_the_worker_timeout_is_a_json_503(fragile_server: LiveServer) -> None:
    body = orjson.dumps({"instances": [TINY_ROW]})
    head = (
        b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    started = time.monotonic()
    answer = parse_raw(fragile_server.raw(head + body, pause_after=len(head) + 5))
    assert 2.5 < time.monotonic() - started < 20
    assert "worker timeout (3 s)" in assert_json_error(answer, 503)["message"]


def test_a_request_head_cut_short_at_the_worker_timeout_is_a_json_408(fragile_server: LiveServer) -> None:
    answer = parse_raw(fragile_server.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"))
    assert "worker timeout" in assert_json_error(answer, 408)["message"]
    # the arbiter replaces the worker; the service answers again
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if fragile_server.request("GET", "/healthz").status == 200:
                break
        time.sleep(0.2)
    else:
        pytest.fail("no worker came back after the timeout")


def test_an_unreachable_audit_database_is_a_503_without_its_address(fragile_server: LiveServer) -> None:
    body = orjson.dumps({"instances": [TINY_ROW], "methods": ["shap"]})
    answer = fragile_server.request(
        "POST", "/v1/models/tiny:explain", body, {"Content-Type": "application/json", "X-Request-ID": "db-9"}
    )
    err = assert_json_error(answer, 503)
    for secret in ("127.0.0.1", ":9", "ledger_db", "auditor", "s3cret", "psycopg"):
        assert secret not in answer.body.decode(), secret
    assert "db-9" in err["message"]
    deadline = time.monotonic() + 10
    while "db-9" not in fragile_server.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    logged = [orjson.loads(line) for line in fragile_server.logs().splitlines() if "db-9" in line]
    assert logged and logged[0]["request_id"] == "db-9" and ISO_TIME.match(logged[0]["timestamp"]), logged


def test_a_model_unavailable_answer_keeps_its_path_free_detail(
    app, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from explain_service.errors import ModelUnavailable

    def unavailable(*_args, **_kwargs):
        raise ModelUnavailable("german-credit", "1", "a file does not match its recorded hash")

    monkeypatch.setattr(app.extensions["explain"].registry, "get", unavailable)
    r = client.get("/v1/models/german-credit", headers={"X-Request-ID": "mu-1"})
    body = r.get_json()
    assert r.status_code == 503 and "'german-credit'" in body["message"] and "mu-1" in body["message"]
    assert body["errors"] == {"model": ["german-credit version 1: a file does not match its recorded hash"]}
