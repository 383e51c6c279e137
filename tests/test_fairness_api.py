"""``POST /v1/models/{name}:fairness``: figures equal fairlearn's, errors name fields, review role only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_ratio, equalized_odds_difference

from explain_service.fairness.groups import group_labels
from explain_service.registry import ModelRegistry
from explain_service.registry.demo import german_credit_frame
from tests.test_access import ROLES, auth, secured_app

ROWS = 300


@pytest.fixture(scope="module")
def labelled() -> tuple[list[dict], list[str]]:
    X, y = german_credit_frame()
    rows = X.head(ROWS)
    instances = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows.to_dict("records")
    ]
    return instances, ["good" if v == 1 else "bad" for v in y.head(ROWS)]


def test_an_audit_over_http_equals_fairlearn_and_is_recorded(
    client, app, registry: ModelRegistry, labelled
) -> None:
    instances, labels = labelled
    body = {"instances": instances, "labels": labels, "intersect": True, "seed": 3, "resamples": 300}
    r = client.post("/v1/models/german-credit:fairness", json=body)
    assert r.status_code == 200, r.get_json()
    audit = r.get_json()
    model = registry.get("german-credit")
    frame = model.schema.coerce(german_credit_frame()[0].head(ROWS))
    y_pred = model.predict_proba(frame).argmax(axis=1) == 1
    y_true = np.array(labels) == "good"
    for feature, edges in (("sex", None), ("age", [0, 25, 40, 60, 200])):
        groups = group_labels(frame[feature], edges)
        ours = audit["by_feature"][feature]
        assert ours["demographic_parity_ratio"] == pytest.approx(
            demographic_parity_ratio(y_true, y_pred, sensitive_features=groups), abs=1e-12
        )
        assert ours["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(y_true, y_pred, sensitive_features=groups), abs=1e-12
        )
    assert (
        audit["positive"] == "good" and audit["data"]["rows"] == ROWS and "sex & age" in audit["by_feature"]
    )
    record = app.extensions["explain"].audit.require(audit["id"])
    assert record.body["kind"] == "fairness" and record.body["figures"]["by_feature"] == audit["by_feature"]
    again = client.post("/v1/models/german-credit/versions/1:fairness", json=body).get_json()
    assert again["by_feature"] == audit["by_feature"] and again["data"]["sha256"] == audit["data"]["sha256"]


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"labels": ["good", "maybe", 1]}, {"labels.1", "labels.2"}),
        ({"labels": ["good"]}, {"labels"}),
        ({"sensitive": ["sex", "religion"]}, {"sensitive.1"}),
        ({"sensitive": ["age"], "bins": {"age": [40, 20]}}, {"bins.age"}),
        ({"sensitive": ["sex"], "bins": {"age": [0, 200]}}, {"bins.age"}),
        ({"resamples": 10**6}, {"resamples"}),
        ({"seed": "1"}, {"seed"}),
        ({"intersect": 1}, {"intersect"}),
        ({"extra": 1}, {"extra"}),
        ({"instances": [{"sex": "female"}] * 3}, None),
    ],
    ids=[
        "labels",
        "label-count",
        "sensitive",
        "bins",
        "bins-unused",
        "resamples",
        "seed",
        "intersect",
        "unknown",
        "instances",
    ],
)
def test_bad_requests_are_422_naming_the_field(client, labelled, change, fields) -> None:
    instances, labels = labelled
    body = {"instances": instances[:3], "labels": labels[:3], **change}
    r = client.post("/v1/models/german-credit:fairness", json=body)
    assert r.status_code == 422, r.get_json()
    errors = set(r.get_json()["errors"])
    if fields is None:
        assert errors and all(e.startswith("instances.") for e in errors)
    else:
        assert errors == fields


def test_every_bad_field_is_named_in_one_answer(client, labelled) -> None:
    """A bad grouping, a bad row and a bad label are all reported at once, not the first one found."""
    instances, labels = labelled
    body = {
        "instances": [instances[0], {**instances[1], "age": "old"}, instances[2]],
        "labels": [labels[0], "maybe", labels[2]],
        "sensitive": ["sex", "religion"],
        "bins": {"age": [0, 200]},
    }
    r = client.post("/v1/models/german-credit:fairness", json=body)
    assert r.status_code == 422, r.get_json()
    answer = r.get_json()
    assert set(answer["errors"]) == {"sensitive.1", "bins.age", "instances.1.age", "labels.1"}
    assert answer["message"] == "Invalid request: bins.age, instances.1.age, labels.1, sensitive.1"
    assert answer["errors"]["labels.1"] == ["Not a class name of the model (bad, good)."]


def test_regressors_are_refused(client) -> None:
    r = client.post("/v1/models/diabetes-gbr:fairness", json={"instances": [{}], "labels": ["x"]})
    assert r.status_code == 422 and "model" in r.get_json()["errors"]


def test_the_row_bound_names_instances(demo_models_dir: Path, tmp_path: Path, labelled) -> None:
    from tests.conftest import OPEN_ACCESS

    app = secured_app(
        demo_models_dir, f"sqlite:///{tmp_path / 'a.sqlite3'}", tmp_path, fairness_max_rows=10, **OPEN_ACCESS
    )
    instances, labels = labelled
    r = app.test_client().post(
        "/v1/models/german-credit:fairness", json={"instances": instances[:11], "labels": labels[:11]}
    )
    assert r.status_code == 422 and list(r.get_json()["errors"]) == ["instances"]
    # over the bound, the rows are not read but the groupings and labels are still checked
    r = app.test_client().post(
        "/v1/models/german-credit:fairness",
        json={"instances": instances[:11], "labels": labels[:10], "sensitive": ["religion"]},
    )
    assert r.status_code == 422 and set(r.get_json()["errors"]) == {"instances", "labels", "sensitive.0"}


def test_only_review_and_admin_keys_may_audit(demo_models_dir: Path, tmp_path: Path, labelled) -> None:
    app = secured_app(demo_models_dir, f"sqlite:///{tmp_path / 'a.sqlite3'}", tmp_path, ratelimit_default="")
    store = app.extensions["explain_access"].keys
    keys = {role: store.create(f"{role}-key", role) for role in ROLES}
    client = app.test_client()
    instances, labels = labelled
    body = {"instances": instances[:40], "labels": labels[:40], "resamples": 50}
    assert client.post("/v1/models/german-credit:fairness", json=body).status_code == 401
    assert (
        client.post("/v1/models/german-credit:fairness", json=body, headers=auth(keys["explain"])).status_code
        == 403
    )
    r = client.post("/v1/models/german-credit:fairness", json=body, headers=auth(keys["review"]))
    assert r.status_code == 200, r.get_json()
    record = app.extensions["explain"].audit.require(r.get_json()["id"])
    assert record.caller == "review-key"


FAIRNESS_OPERATIONS = [
    "POST /v1/models/{name}:fairness",
    "POST /v1/models/{name}/versions/{version}:fairness",
    "GET /v1/models/{name}/importance",
]


@pytest.fixture(scope="module")
def fuzzed(demo_models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    import schemathesis

    var = tmp_path_factory.mktemp("fairness-fuzz")
    app = secured_app(demo_models_dir, f"sqlite:///{var}/audit.sqlite3", var, ratelimit_default="")
    key = app.extensions["explain_access"].keys.create("fuzz", "review")
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, headers=auth(key))
    found = {op.label: op for op in (r.ok() for r in schema.get_all_operations())}
    return found, key


@pytest.mark.parametrize("label", FAIRNESS_OPERATIONS)
def test_generated_requests_never_get_a_server_error(fuzzed, label: str) -> None:
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    found, key = fuzzed

    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(case=found[label].as_strategy())
    def check(case) -> None:
        response = case.call(headers=auth(key))
        assert response.status_code < 500, (label, case.path_parameters, case.body, response.text[:300])
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    check()


def test_successful_answers_conform_to_the_document(fuzzed, labelled) -> None:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    found, key = fuzzed
    instances, labels = labelled
    cases = [
        found["POST /v1/models/{name}:fairness"].Case(
            path_parameters={"name": "german-credit"},
            body={"instances": instances[:60], "labels": labels[:60], "intersect": True, "resamples": 50},
            media_type="application/json",
        ),
        found["GET /v1/models/{name}/importance"].Case(path_parameters={"name": "german-credit"}),
    ]
    for case in cases:
        response = case.call(headers=auth(key))
        assert response.status_code == 200, response.text[:300]
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
