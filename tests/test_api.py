"""The HTTP API: shapes of the contract, predictions equal the model's own, hostile input gives 4xx."""

from __future__ import annotations

import json
import math

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests._agreement import checked_both_ways
from tests.conftest import GERMAN_ROW


def post(client, path: str, body) -> tuple[int, dict]:
    r = client.post(path, data=orjson.dumps(body), content_type="application/json")
    return r.status_code, r.get_json()


def test_health_readiness_metrics_openapi_docs(client) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["models"] == 5
    client.get("/v1/models")
    assert b"explain_requests_total" in client.get("/metrics").data
    spec = client.get("/openapi.json").get_json()
    for path in ("/v1/models/{name}:explain", "/v1/models/{name}/versions/{version}:predict", "/healthz"):
        assert path in spec["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and b"/v1/models/{name}:explain" in docs.data


def test_list_and_describe_models(client) -> None:
    names = [m["name"] for m in client.get("/v1/models").get_json()["models"]]
    assert names == sorted(
        ["german-credit", "german-credit-linear", "breast-cancer-forest", "wine-mlp", "diabetes-gbr"]
    )
    desc = client.get("/v1/models/german-credit").get_json()
    assert desc["versions"] == ["1"] and desc["favorable"] == "good"
    assert desc["methods"][0] == "shap" and desc["shap_outputs"] == ["log_odds", "probability"]
    assert client.get("/v1/models/german-credit/versions/1").get_json()["sha256"] == desc["sha256"]
    assert client.get("/v1/models/german-credit/versions/7").status_code == 404


@pytest.mark.parametrize(
    "name", ["german-credit", "german-credit-linear", "breast-cancer-forest", "wine-mlp", "diabetes-gbr"]
)
def test_predict_equals_the_models_own_predictions(client, registry, name: str) -> None:
    model = registry.get(name)
    rows = model.background.iloc[:7]
    instances = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows.to_dict("records")
    ]
    status, body = post(client, f"/v1/models/{name}:predict", {"instances": instances})
    assert status == 200
    assert body["model"] == {"name": name, "version": "1", "sha256": model.sha256}
    if model.is_classifier:
        expected = model.predict_proba(rows)
        got = np.array([[p["probabilities"][c] for c in model.class_names] for p in body["predictions"]])
        np.testing.assert_array_equal(got, expected)
        assert [p["label"] for p in body["predictions"]] == [model.class_names[i] for i in expected.argmax(1)]
    else:
        np.testing.assert_array_equal([p["value"] for p in body["predictions"]], model.predict_value(rows))


def test_explain_answer_has_the_contract_shape(client, registry) -> None:
    status, body = post(client, "/v1/models/german-credit:explain", {"instances": [GERMAN_ROW, GERMAN_ROW]})
    assert status == 200
    assert set(body) == {"model", "explanations"}
    assert len(body["explanations"]) == 2
    first = body["explanations"][0]
    assert first["id"] and first["id"] != body["explanations"][1]["id"]
    assert first["prediction"]["label"] in ("bad", "good")
    shap_part = first["shap"]
    assert set(shap_part) >= {"target", "output", "base_value", "values", "additivity_residual"}
    assert list(shap_part["values"]) == registry.get("german-credit").schema.names
    assert shap_part["target"] == first["prediction"]["label"]
    assert first["reasons"][0]["feature"] == max(shap_part["values"], key=lambda k: shap_part["values"][k])


def test_explain_by_version_with_target_and_output(client, registry) -> None:
    body = {"instances": [GERMAN_ROW], "target": "good", "options": {"shap": {"output": "probability"}}}
    status, answer = post(client, "/v1/models/german-credit/versions/1:explain", body)
    assert status == 200
    exp = answer["explanations"][0]
    assert exp["shap"]["target"] == "good" and exp["shap"]["output"] == "probability"
    total = exp["shap"]["base_value"] + sum(exp["shap"]["values"].values())
    assert total == pytest.approx(exp["prediction"]["probabilities"]["good"], abs=1e-6)
    assert "lowered the likelihood of 'good'" in exp["reasons"][0]["text"]
    # Each sentence starts with the feature as registered; a category follows a colon, an amount "of".
    kinds = {f.name: f.kind for f in registry.get("german-credit").schema.features}
    for reason in exp["reasons"]:
        value = reason["value"]
        joint = ": " if kinds[reason["feature"]] == "categorical" else " of "
        assert reason["text"].startswith(f"{reason['feature']}{joint}{value} lowered"), reason


def test_regression_and_multiclass(client, registry) -> None:
    diabetes = registry.get("diabetes-gbr").background.iloc[0].to_dict()
    status, answer = post(client, "/v1/models/diabetes-gbr:explain", {"instances": [diabetes]})
    assert status == 200
    exp = answer["explanations"][0]
    assert exp["shap"]["output"] == "raw" and exp["shap"]["target"] is None
    assert exp["shap"]["base_value"] + sum(exp["shap"]["values"].values()) == pytest.approx(
        exp["prediction"]["value"]
    )
    wine = registry.get("wine-mlp").background.iloc[0].to_dict()
    status, answer = post(client, "/v1/models/wine-mlp:explain", {"instances": [wine], "target": "class_2"})
    assert status == 200 and answer["explanations"][0]["shap"]["target"] == "class_2"


def test_repeated_requests_are_byte_identical_apart_from_ids_and_plot_urls(client) -> None:
    body = {"instances": [GERMAN_ROW], "options": {"shap": {"output": "probability"}}}
    answers = []
    for _ in range(2):
        r = client.post(
            "/v1/models/german-credit:explain", data=orjson.dumps(body), content_type="application/json"
        )
        parsed = orjson.loads(r.data)
        for e in parsed["explanations"]:
            assert e.pop("plots") == {
                name: f"/v1/explanations/{e['id']}/plots/{name}.png"
                for name in ("shap_waterfall", "shap_bar")
            }
            e.pop("id")
        answers.append(orjson.dumps(parsed))
    assert answers[0] == answers[1]


def _row(**changes):
    row = dict(GERMAN_ROW)
    for k, v in changes.items():
        if v is _DROP:
            row.pop(k)
        else:
            row[k] = v
    return row


_DROP = object()
BAD_REQUESTS = [
    ("missing-feature", {"instances": [_row(age=_DROP)]}, "instances.0.age"),
    ("unknown-feature", {"instances": [_row(income=3)]}, "instances.0.income"),
    ("string-for-number", {"instances": [_row(age="22")]}, "instances.0.age"),
    ("bool-for-number", {"instances": [_row(age=True)]}, "instances.0.age"),
    ("fraction-for-integer", {"instances": [_row(age=22.5)]}, "instances.0.age"),
    ("null-value", {"instances": [_row(duration=None)]}, "instances.0.duration"),
    ("unknown-category", {"instances": [_row(purpose="yacht")]}, "instances.0.purpose"),
    ("number-for-category", {"instances": [_row(sex=1)]}, "instances.0.sex"),
    ("second-row-bad", {"instances": [GERMAN_ROW, _row(housing="castle")]}, "instances.1.housing"),
    ("instance-not-object", {"instances": [[1, 2]]}, "instances.0"),
    ("empty-batch", {"instances": []}, "instances"),
    ("oversized-batch", {"instances": [GERMAN_ROW] * 101}, "instances"),
    ("no-instances", {"methods": ["shap"]}, "instances"),
    ("unknown-method", {"instances": [GERMAN_ROW], "methods": ["magic"]}, "methods.0"),
    ("duplicate-method", {"instances": [GERMAN_ROW], "methods": ["shap", "shap"]}, "methods"),
    ("unknown-target", {"instances": [GERMAN_ROW], "target": "maybe"}, "target"),
    ("numeric-target", {"instances": [GERMAN_ROW], "target": 1}, "target"),
    ("unknown-option-method", {"instances": [GERMAN_ROW], "options": {"magic": {}}}, "options.magic"),
    (
        "unknown-option-key",
        {"instances": [GERMAN_ROW], "options": {"shap": {"speed": 3}}},
        "options.shap.speed",
    ),
    (
        "bad-output",
        {"instances": [GERMAN_ROW], "options": {"shap": {"output": "odds"}}},
        "options.shap.output",
    ),
    (
        "raw-for-classifier",
        {"instances": [GERMAN_ROW], "options": {"shap": {"output": "raw"}}},
        "options.shap.output",
    ),
    (
        "budget-too-big",
        {"instances": [GERMAN_ROW], "options": {"shap": {"max_evals": 10**9}}},
        "options.shap.max_evals",
    ),
    ("extra-top-level", {"instances": [GERMAN_ROW], "debug": True}, "debug"),
    ("body-is-list", [GERMAN_ROW], "_schema"),
]


@pytest.mark.parametrize(
    ("body", "field"), [(b, f) for _, b, f in BAD_REQUESTS], ids=[i for i, _, _ in BAD_REQUESTS]
)
def test_bad_requests_get_a_422_naming_the_field(client, body, field: str) -> None:
    status, answer = post(client, "/v1/models/german-credit:explain", body)
    assert status == 422
    assert answer["code"] == 422 and answer["status"] == "Unprocessable Entity"
    assert field in answer["errors"], answer
    assert field in answer["message"] or len(answer["errors"]) > 5


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"instances": [{"age": NaN}]}', 400),
        (b'{"instances": [{"age": Infinity}]}', 400),
        (b"{" * 5000, 400),
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b"\xff\xfe\x00", 400),
        (b"", 422),
    ],
    ids=["nan", "infinity", "truncated", "deep-nesting", "bad-utf8", "empty-body"],
)
def test_malformed_bodies_get_a_4xx_json_error(client, raw: bytes, status: int) -> None:
    r = client.post("/v1/models/german-credit:explain", data=raw, content_type="application/json")
    assert r.status_code == status
    assert r.get_json()["code"] == status


def test_regression_target_and_unknown_model(client, registry) -> None:
    row = registry.get("diabetes-gbr").background.iloc[0].to_dict()
    status, answer = post(client, "/v1/models/diabetes-gbr:explain", {"instances": [row], "target": "x"})
    assert status == 422 and "target" in answer["errors"]
    status, answer = post(client, "/v1/models/nope:explain", {"instances": [GERMAN_ROW]})
    assert status == 404 and answer["message"] == "No model 'nope' is registered"


def test_oversized_body_is_413(client) -> None:
    big = orjson.dumps({"instances": [GERMAN_ROW] * 20_000})
    r = client.post("/v1/models/german-credit:explain", data=big, content_type="application/json")
    assert r.status_code == 413 and r.get_json()["code"] == 413


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
feature_values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.sampled_from(["male", "female", "own", "little", "car", "rich"]),
    st.booleans(),
    st.none(),
)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(body=json_values)
def test_arbitrary_json_bodies_never_give_5xx(client, body) -> None:
    r = client.post(
        "/v1/models/german-credit:explain", data=json.dumps(body), content_type="application/json"
    )
    assert 400 <= r.status_code < 500


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(changes=st.dictionaries(st.sampled_from(sorted(GERMAN_ROW)), feature_values, max_size=4))
def test_mutated_instances_are_explained_or_rejected_never_5xx(client, changes) -> None:
    row = {**GERMAN_ROW, **changes}
    r = client.post(
        "/v1/models/german-credit:explain",
        data=json.dumps({"instances": [row]}),
        content_type="application/json",
    )
    assert r.status_code in (200, 422)
    if r.status_code == 200:
        shap_part = r.get_json()["explanations"][0]["shap"]
        assert all(math.isfinite(v) for v in shap_part["values"].values())


def test_extreme_but_valid_numbers_are_explained(client) -> None:
    status, answer = post(
        client, "/v1/models/german-credit:explain", {"instances": [_row(credit_amount=10**15, age=0)]}
    )
    assert status == 200
    assert abs(answer["explanations"][0]["shap"]["additivity_residual"]) < 1e-4
    frame = pd.DataFrame([_row(credit_amount=10**15, age=0)])
    assert len(frame) == 1


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(changes=st.dictionaries(st.sampled_from([*sorted(GERMAN_ROW), "extra"]), feature_values, max_size=4))
def test_fast_validation_agrees_with_the_marshmallow_schema(registry, changes) -> None:
    model = registry.get("german-credit")
    row = {**GERMAN_ROW, **changes}
    checked_both_ways(model, row)


def test_numbers_beyond_float_range_are_rejected_not_crashed(registry) -> None:
    from explain_service.errors import ValidationFailed
    from explain_service.validation import validate_instances

    model = registry.get("diabetes-gbr")
    row = {k: float(v) for k, v in model.background.iloc[0].items()}
    with pytest.raises(ValidationFailed) as info:
        validate_instances(model, [{**row, "age": 10**400}])
    assert info.value.errors == {"instances.0.age": ["Number out of range."]}
