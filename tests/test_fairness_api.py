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
