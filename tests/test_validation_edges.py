"""Hostile request edges: numbers no model can hold, exact integers, JSON traps, options and body limits.

Every bad request answers 4xx in the JSON error shape naming the field, writes no audit record,
and values just inside the accepted range are explained with the model's own predictions.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explain_service.app import create_app
from explain_service.registry import register_model
from explain_service.registry.schema import INTEGER_BOUND, NUMERIC_BOUND
from tests._agreement import checked_both_ways
from tests.conftest import GERMAN_ROW, OPEN_ACCESS

FLOAT32_MAX = float(np.finfo(np.float32).max)


def post(client, path: str, body, content_type: str = "application/json"):
    data = body if isinstance(body, bytes | str) else orjson.dumps(body)
    r = client.post(path, data=data, content_type=content_type)
    return r.status_code, r.get_json()


def background_row(registry, name: str) -> dict:
    model = registry.get(name)
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in model.background.iloc[0].items()}


@pytest.fixture
def records(app):
    """How many audit records the session app holds (call it again to compare)."""
    return app.extensions["explain"].audit.count


# -- the layering ---------------------------------------------------------------------------------
def _imports(module: str) -> set[str]:
    """Modules ``module`` imports, following explain_service's own modules (read, not imported)."""
    root = Path(__file__).resolve().parent.parent
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = root / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = root / name.replace(".", "/") / "__init__.py"
        if not name.startswith("explain_service") or not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo.append(node.module)
                todo.extend(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                todo.extend(a.name for a in node.names)
    return seen


def test_batch_validation_does_not_import_the_web_layer() -> None:
    found = _imports("explain_service.batch.validate")
    assert "explain_service.validation" in found
    assert not [m for m in found if m.startswith("explain_service.api") or m.split(".")[0] == "flask"]
    assert "explain_service.api.validation" not in _imports("explain_service.api.models")


# -- numbers beyond what the model reads -----------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "feature"),
    [("breast-cancer-forest", "mean radius"), *[("diabetes-gbr", f) for f in ("age", "bmi", "s6")]],
    ids=["forest", "gbr-age", "gbr-bmi", "gbr-s6"],
)
def test_numbers_beyond_float32_are_refused_by_name(client, registry, records, name, feature) -> None:
    before = records()
    for value in (3.5e38, -3.5e38, 1e300):
        status, body = post(
            client,
            f"/v1/models/{name}:explain",
            {"instances": [{**background_row(registry, name), feature: value}]},
        )
        assert status == 422, body
        assert list(body["errors"]) == [f"instances.0.{feature}"]
        assert body["errors"][f"instances.0.{feature}"][0].startswith("Number out of range")
    assert records() == before


def test_the_largest_float32_is_explained_with_the_models_own_prediction(client, registry) -> None:
    model = registry.get("breast-cancer-forest")
    row = {**background_row(registry, "breast-cancer-forest"), "mean radius": FLOAT32_MAX}
    status, body = post(client, "/v1/models/breast-cancer-forest:predict", {"instances": [row]})
    assert status == 200
    expected = model.estimator.predict_proba(pd.DataFrame([row])[model.schema.names].to_numpy())[0]
    got = [body["predictions"][0]["probabilities"][c] for c in model.class_names]
    np.testing.assert_array_equal(got, expected)


def test_a_value_that_overflows_once_scaled_names_its_input_feature(client, registry, records) -> None:
    model = registry.get("wine-mlp")
    scaler = model.preprocessor.named_steps["scale"] if hasattr(model.preprocessor, "named_steps") else None
    scales = dict(zip(model.schema.names, (scaler or model.preprocessor).scale_, strict=True))
    feature = min(scales, key=scales.get)
    assert scales[feature] < 1  # so a float32-range input leaves the float32 range once scaled
    before = records()
    status, body = post(
        client,
        "/v1/models/wine-mlp:explain",
        {"instances": [{**background_row(registry, "wine-mlp"), feature: 3e38}]},
    )
    assert status == 422, body
    assert list(body["errors"]) == [f"instances.0.{feature}"]
    assert "preprocessed" in body["errors"][f"instances.0.{feature}"][0]
    assert records() == before


@pytest.fixture(scope="module")
def xgb_pipeline_client(tmp_path_factory):
    """An XGBoost classifier behind a StandardScaler, with a float feature (``fare``)."""
    import xgboost as xgb
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"fare": rng.gamma(2.0, 0.2, 200), "pclass": rng.integers(1, 4, 200)})
    y = (X.fare * 2 + rng.normal(0, 0.2, 200) > X.pclass * 0.3).astype(int)
    pipe = Pipeline([("scale", StandardScaler()), ("model", xgb.XGBClassifier(n_estimators=8, max_depth=2))])
    pipe.fit(X, y)
    root = tmp_path_factory.mktemp("xgbpipe")
    register_model(pipe, "fares", "1", background=X.iloc[:50], models_dir=root / "models")
    app = create_app(
        {
            "models_dir": str(root / "models"),
            "database_url": f"sqlite:///{root}/audit.sqlite3",
            "plots_dir": str(root / "plots"),
            **OPEN_ACCESS,
        }
    )
    return app.test_client(), pipe


@pytest.mark.parametrize("value", [1e300, 3e38, -3e38], ids=["1e300", "3e38-scaled", "minus-3e38-scaled"])
def test_xgboost_pipeline_refuses_numbers_it_would_read_as_infinity(xgb_pipeline_client, value) -> None:
    client, _ = xgb_pipeline_client
    status, body = post(client, "/v1/models/fares:explain", {"instances": [{"fare": value, "pclass": 2}]})
    assert status == 422, body
    assert list(body["errors"]) == ["instances.0.fare"]


def test_xgboost_pipeline_explains_large_values_that_stay_finite(xgb_pipeline_client) -> None:
    client, pipe = xgb_pipeline_client
    row = {"fare": 1e30, "pclass": 3}
    status, body = post(client, "/v1/models/fares:predict", {"instances": [row]})
    assert status == 200
    expected = pipe.predict_proba(pd.DataFrame([row]))[0]
    got = [body["predictions"][0]["probabilities"][c] for c in ("0", "1")]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_number_no_float_holds_is_a_named_field_error(client, registry) -> None:
    row = background_row(registry, "diabetes-gbr")
    text = orjson.dumps({"instances": [{**row, "bmi": 12345.0}]}).replace(b"12345.0", b"1e400")
    status, body = post(client, "/v1/models/diabetes-gbr:explain", text)
    assert status == 422, body
    assert body["errors"] == {"instances.0.bmi": ["Number out of range."]}
    digits = orjson.dumps({"instances": [{**row, "bmi": 12345.0}]}).replace(b"12345.0", b"9" * 5000)
    status, body = post(client, "/v1/models/diabetes-gbr:explain", digits)
    assert status == 422 and list(body["errors"]) == ["instances.0.bmi"]


# -- integers the model receives exactly, or not at all ----------------------------------------------
@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), 2**63, 2**53 + 1, -(2**53) - 1, 1e300], ids=str)
def test_integers_beyond_2_53_are_refused_by_name(client, records, value) -> None:
    before = records()
    status, body = post(
        client,
        "/v1/models/german-credit:explain",
        {"instances": [{**GERMAN_ROW, "credit_amount": value}], "methods": ["shap", "counterfactual"]},
    )
    assert status == 422, body
    assert list(body["errors"]) == ["instances.0.credit_amount"]
    assert "out of range" in body["errors"]["instances.0.credit_amount"][0]
    assert records() == before


def test_the_largest_exact_integer_is_explained_exactly(client, registry) -> None:
    """2**53 round-trips through every cast; the counterfactual starts from the value sent."""
    model = registry.get("german-credit")
    row = {**GERMAN_ROW, "credit_amount": INTEGER_BOUND}
    status, body = post(
        client,
        "/v1/models/german-credit:explain",
        {
            "instances": [row],
            "methods": ["shap", "lime", "counterfactual"],
            "options": {"lime": {"num_samples": 256}},
        },
    )
    assert status == 200, body
    item = body["explanations"][0]
    expected = model.estimator.predict_proba(model.preprocessor.transform(pd.DataFrame([row])))[0]
    np.testing.assert_allclose([item["prediction"]["probabilities"][c] for c in model.class_names], expected)
    for cf in item["counterfactual"]["counterfactuals"]:
        change = cf["changes"].get("credit_amount")
        if change is not None:
            assert change["from"] == INTEGER_BOUND and abs(change["to"]) <= INTEGER_BOUND
        assert abs(cf["instance"]["credit_amount"]) <= INTEGER_BOUND


bound_values = st.one_of(
    st.sampled_from(
        [
            INTEGER_BOUND,
            INTEGER_BOUND + 1,
            -INTEGER_BOUND,
            -INTEGER_BOUND - 1,
            2**63 - 1,
            -(2**63),
            float(INTEGER_BOUND),
            float(INTEGER_BOUND) * 2,
            NUMERIC_BOUND,
            -NUMERIC_BOUND,
            float(np.nextafter(NUMERIC_BOUND, np.inf)),
            1e300,
            3.0,
            True,
            "3",
        ]
    ),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(value=bound_values, which=st.sampled_from(["credit_amount", "mean radius"]))
def test_fast_path_and_schema_agree_at_the_range_edges(registry, value, which) -> None:
    name = "german-credit" if which == "credit_amount" else "breast-cancer-forest"
    model = registry.get(name)
    row = {**(GERMAN_ROW if name == "german-credit" else background_row(registry, name)), which: value}
    slow = checked_both_ways(model, row)
    if slow is not None:
        bound = INTEGER_BOUND if which == "credit_amount" else NUMERIC_BOUND
        assert abs(slow[which]) <= bound


# -- JSON and HTTP traps ---------------------------------------------------------------------------
def test_repeated_keys_are_refused_by_path(client, records) -> None:
    before = records()
    row = orjson.dumps(GERMAN_ROW).decode()
    text = '{"instances": [' + row[:-1] + ', "age": 99}]}'
    status, body = post(client, "/v1/models/german-credit:explain", text)
    assert status == 400, body
    assert body["errors"] == {"instances.0.age": ["Repeated key in the JSON body."]}
    text = '{"methods": ["shap"], "instances": [' + row + '], "methods": ["lime"]}'
    status, body = post(client, "/v1/models/german-credit:explain", text)
    assert status == 400 and list(body["errors"]) == ["methods"]
    # An escaped key is the same key.
    text = '{"instances": [' + row[:-1] + ', "\\u0061ge": 99}]}'
    status, body = post(client, "/v1/models/german-credit:explain", text)
    assert status == 400 and list(body["errors"]) == ["instances.0.age"]
    assert records() == before


def test_colons_in_values_and_escapes_are_not_mistaken_for_repeated_keys(client) -> None:
    body = {"instances": [GERMAN_ROW], "methods": ["shap"], "options": {"shap": {"output": "probability"}}}
    text = orjson.dumps(body).decode().replace('"probability"', '"prob\\u0061bility"')
    assert post(client, "/v1/models/german-credit:predict", {"instances": [GERMAN_ROW]})[0] == 200
    assert post(client, "/v1/models/german-credit:explain", text)[0] == 200
    status, answer = post(client, "/v1/models/german-credit:explain", {**body, "target": "a:b"})
    assert status == 422 and list(answer["errors"]) == ["target"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_declared_json_is_415_naming_the_type_expected(client, content_type) -> None:
    data = orjson.dumps({"instances": [GERMAN_ROW]})
    r = client.post("/v1/models/german-credit:explain", data=data, content_type=content_type)
    body = r.get_json()
    assert r.status_code == 415, body
    assert body["code"] == 415 and body["status"] == "Unsupported Media Type"
    assert "application/json" in body["message"] and "Content-Type" in body["errors"]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"lime": {"num_samples": "500"}}, "options.lime.num_samples"),
        ({"lime": {"width": "0.5"}}, "options.lime.width"),
        ({"lime": {"num_samples": 500.0}}, "options.lime.num_samples"),
        ({"shap": {"max_evals": "1000"}}, "options.shap.max_evals"),
        ({"counterfactual": {"count": True}}, "options.counterfactual.count"),
        ({"counterfactual": {"desired_range": ["1", "2"]}}, "options.counterfactual.desired_range.0"),
        (
            {"counterfactual": {"constraints": {"age": {"mutable": "no"}}}},
            "options.counterfactual.constraints.age.value.mutable",
        ),
    ],
    ids=[
        "int-as-text",
        "float-as-text",
        "int-as-float",
        "shap-int-as-text",
        "bool-as-int",
        "range-as-text",
        "bool-as-text",
    ],
)
def test_options_keep_their_json_types(client, options, field) -> None:
    body = {"instances": [GERMAN_ROW], "methods": ["shap", "lime", "counterfactual"], "options": options}
    status, answer = post(client, "/v1/models/german-credit:explain", body)
    assert status == 422, answer
    assert field in answer["errors"], answer["errors"]


def test_options_for_a_method_not_requested_are_refused_and_not_stored(client, records) -> None:
    before = records()
    pad = "x" * 1_500_000
    body = {"instances": [GERMAN_ROW], "methods": ["shap"], "options": {"lime": {"pad": pad}}}
    status, answer = post(client, "/v1/models/german-credit:explain", body)
    assert status == 422
    assert list(answer["errors"]) == ["options.lime"]
    body = {"instances": [GERMAN_ROW], "methods": ["lime"], "options": {"lime": {"pad": pad}}}
    status, answer = post(client, "/v1/models/german-credit:explain", body)
    assert status == 422 and list(answer["errors"]) == ["options.lime.pad"]
    assert records() == before


def test_options_are_recorded_as_sent(client, app) -> None:
    options = {"lime": {"num_samples": 256}}
    status, answer = post(
        client,
        "/v1/models/german-credit:explain",
        {"instances": [GERMAN_ROW], "methods": ["lime"], "options": options},
    )
    assert status == 200
    stored = app.extensions["explain"].audit.require(answer["explanations"][0]["id"])
    assert stored.body["request"]["options"] == options


def test_the_error_list_is_capped(client) -> None:
    extra = {f"k{i:x}": 0 for i in range(180_000)}
    data = orjson.dumps({"instances": [{**GERMAN_ROW, **extra}]})
    assert len(data) < 2 * 1024 * 1024
    r = client.post("/v1/models/german-credit:explain", data=data, content_type="application/json")
    body = r.get_json()
    assert r.status_code == 422
    assert len(r.data) < 20_000
    assert len(body["errors"]) == 50
    assert body["errors"]["instances.0._more"] == ["179951 more unknown fields are not listed."]
    top = orjson.dumps({"instances": [GERMAN_ROW], **extra})
    r = client.post("/v1/models/german-credit:explain", data=top, content_type="application/json")
    assert r.status_code == 422 and len(r.data) < 20_000
    assert r.get_json()["errors"]["_more"] == ["179951 more unknown fields are not listed."]


def test_any_long_error_listing_is_capped(client) -> None:
    instances = [{**GERMAN_ROW, "age": "old"} for _ in range(80)]
    status, body = post(client, "/v1/models/german-credit:predict", {"instances": instances})
    assert status == 422 and len(body["errors"]) == 51
    assert body["errors"]["_more"] == ["30 more fields have errors; the first 50 are listed."]


# -- body size ---------------------------------------------------------------------------------------
def padded_body(limit: int) -> bytes:
    """A valid explain request of exactly ``limit`` bytes (JSON allows trailing whitespace)."""
    head = orjson.dumps({"instances": [GERMAN_ROW]})
    return head + b" " * (limit - len(head))


def test_a_chunked_body_over_the_limit_is_413_not_truncated(app, client, records) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    body = padded_body(limit)
    assert len(body) == limit
    before = records()
    for extra in (b"x", b"garbage" * 100_000):
        r = client.post(
            "/v1/models/german-credit:explain",
            input_stream=io.BytesIO(body + extra),
            content_type="application/json",
            headers={"Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )
        assert r.status_code == 413, r.data[:200]
        assert r.get_json()["code"] == 413 and r.get_json()["status"] == "Request Entity Too Large"
    assert records() == before


def test_a_chunked_body_of_exactly_the_limit_is_read_whole(app, client) -> None:
    body = padded_body(app.config["MAX_CONTENT_LENGTH"])
    r = client.post(
        "/v1/models/german-credit:explain",
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert r.status_code == 200, r.data[:200]


def _chunked_post(port: int, path: str, body: bytes, chunk: int = 64 * 1024) -> tuple[int, dict]:
    """POST ``body`` with Transfer-Encoding: chunked on a raw socket; the answer is read meanwhile."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    received = bytearray()

    def read() -> None:
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                received.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):  # the server may stop reading once it has answered
        sock.sendall(head.encode())
        for start in range(0, len(body), chunk):
            part = body[start : start + chunk]
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")
    reader.join(timeout=60)
    sock.close()
    header, _, payload = bytes(received).partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in header.lower():
        decoded, rest = bytearray(), payload
        while rest:
            size_text, _, rest = rest.partition(b"\r\n")
            size = int(size_text, 16)
            if size == 0:
                break
            decoded.extend(rest[:size])
            rest = rest[size + 2 :]
        payload = bytes(decoded)
    return status, orjson.loads(payload)


@pytest.mark.slow
def test_gunicorn_refuses_a_chunked_body_over_the_limit(demo_models_dir: Path, tmp_path: Path) -> None:
    from explain_service.audit import AuditStore

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "EXPLAIN_MODELS_DIR": str(demo_models_dir),
        "EXPLAIN_DATABASE_URL": url,
        "EXPLAIN_PLOTS_DIR": str(tmp_path / "plots"),
        "EXPLAIN_EAGER_LOAD": "0",
        "EXPLAIN_AUTH": "off",
        "EXPLAIN_RATELIMIT_DEFAULT": "",
        "EXPLAIN_REQUEST_DEADLINE_SECONDS": "0",
    }
    command = [str(Path(sys.executable).with_name("gunicorn")), "-b", f"127.0.0.1:{port}", "-w", "1"]
    command += ["--log-level", "warning", "--config", "python:explain_service.gunicorn_conf"]
    proc = subprocess.Popen([*command, "explain_service.app:create_app()"], cwd=root, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.3)
        limit = 2 * 1024 * 1024
        status, body = _chunked_post(
            port, "/v1/models/german-credit:explain", orjson.dumps({"instances": [GERMAN_ROW]})
        )
        assert status == 200 and len(body["explanations"]) == 1
        status, body = _chunked_post(
            port, "/v1/models/german-credit:explain", padded_body(limit) + b"garbage" * 3_000_000
        )
        assert status == 413, body
        assert body["code"] == 413 and body["status"] == "Request Entity Too Large"
        assert AuditStore(url).count() == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
