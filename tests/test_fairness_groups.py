"""Sensitive features: registration checks, the manifest field, group labels and frozen counterfactuals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from explain_service.errors import OptionError, RegistrationError
from explain_service.explainers.counterfactual import CounterfactualExplainer, CounterfactualOptions
from explain_service.fairness.groups import bin_labels, group_labels, intersection_labels
from explain_service.registry import load_version_dir, register_model

EDGES = [0, 25, 40, 60, 200]


def _applicants(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Approval depends on age and income, so counterfactuals change either when both may change."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "income": rng.normal(50.0, 10.0, n),
            "age": rng.integers(19, 76, n),
            "sex": rng.choice(["female", "male"], n),
        }
    )
    y = ((X.age - 45) / 10 + (X.income - 50) / 5 + rng.normal(0, 0.3, n) > 0).astype(int).to_numpy()
    return X, y


def _register(tmp_path: Path, name: str, **kwargs):
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    X, y = _applicants()
    pre = ColumnTransformer([("cat", OneHotEncoder(sparse_output=False), ["sex"])], remainder="passthrough")
    model = Pipeline([("pre", pre), ("m", LogisticRegression(max_iter=1000))]).fit(X, y)
    manifest = register_model(
        model,
        name,
        "1",
        background=X,
        class_names=["no", "yes"],
        favorable="yes",
        models_dir=tmp_path,
        **kwargs,
    )
    return manifest, load_version_dir(tmp_path / name / "1")


def test_numeric_values_fall_in_left_closed_bins_and_the_last_bin_is_closed() -> None:
    values = [0, 24.9, 25, 30, 40, 59, 60, 200, -1, 200.5, None]
    assert group_labels(values, EDGES).tolist() == [
        "[0, 25)",
        "[0, 25)",
        "[25, 40)",
        "[25, 40)",
        "[40, 60)",
        "[40, 60)",
        "[60, 200]",
        "[60, 200]",
        "(-inf, 0)",
        "(200, inf)",
        "missing",
    ]
    assert bin_labels([0.5, 1, 2.25]) == ["[0.5, 1)", "[1, 2.25]"]


def test_values_grouped_by_value_have_stable_text_labels() -> None:
    assert group_labels(["female", None, "male"], None).tolist() == ["female", "missing", "male"]
    assert group_labels(np.array([1.0, 2.0, np.nan]), None).tolist() == ["1", "2", "missing"]
    assert group_labels(np.array([True, False]), None).tolist() == ["True", "False"]
    assert group_labels(np.array([3, 1]), None).tolist() == ["3", "1"]
    both = intersection_labels([group_labels(["female", "male"], None), group_labels([30, 70], EDGES)])
    assert both.tolist() == ["female & [25, 40)", "male & [60, 200]"]


def test_sensitive_features_are_stored_in_the_manifest_and_frozen(tmp_path: Path) -> None:
    manifest, loaded = _register(tmp_path, "applicants", sensitive={"sex": None, "age": EDGES})
    stored = orjson.loads((tmp_path / "applicants" / "1" / "manifest.json").read_bytes())
    assert stored["sensitive"] == {"sex": None, "age": EDGES}
    assert loaded.manifest.sensitive == {"sex": None, "age": tuple(EDGES)} == manifest.sensitive
    assert not loaded.schema.constraint("age").mutable and not loaded.schema.constraint("sex").mutable
    assert loaded.describe()["sensitive"] == {"sex": None, "age": EDGES}


def test_a_model_without_sensitive_features_has_an_empty_field(tmp_path: Path) -> None:
    _, loaded = _register(tmp_path, "plain")
    assert loaded.manifest.sensitive == {} and loaded.schema.constraint("age").mutable


@pytest.mark.parametrize(
    ("sensitive", "message"),
    [
        ({"religion": None}, "sensitive names unknown feature 'religion'"),
        ({"age": [0, 40, 40, 200]}, "sensitive 'age': bin edges must be strictly increasing"),
        ({"age": [30, 60, 200]}, "sensitive 'age': the first bin edge 30 is above the observed minimum 19"),
        ({"age": [0, 25, 70]}, "sensitive 'age': the last bin edge 70 is below the observed maximum 75"),
        ({"age": [0, "x", 200]}, "sensitive 'age': bin edge 'x' is not a number"),
        ({"age": [0, float("inf")]}, "sensitive 'age': bin edge inf is not finite"),
        ({"age": [0]}, "sensitive 'age': give at least two bin edges"),
        ({"income": None}, "sensitive 'income' is numeric: give bin edges"),
        ({"sex": [0, 1]}, "sensitive 'sex' is categorical: give None"),
        (["sex"], "sensitive must map feature names"),
    ],
    ids=[
        "unknown",
        "not-increasing",
        "above-min",
        "below-max",
        "not-number",
        "infinite",
        "one-edge",
        "numeric-without-edges",
        "categorical-with-edges",
        "not-a-mapping",
    ],
)
def test_bad_sensitive_specifications_are_refused_by_name(tmp_path: Path, sensitive, message: str) -> None:
    with pytest.raises(RegistrationError, match=message.replace("(", r"\(")):
        _register(tmp_path, "bad", sensitive=sensitive)
    assert not (tmp_path / "bad").exists()


def _declined(loaded) -> pd.DataFrame:
    proba = loaded.predict_proba(loaded.background)
    return loaded.background[proba[:, 1] < 0.3].head(5).reset_index(drop=True)


def _changed(loaded, **opts) -> set[str]:
    rows = _declined(loaded)
    results = CounterfactualExplainer().explain(loaded, rows, None, CounterfactualOptions().load(opts))
    assert any(r["counterfactuals"] for r in results)
    return {f for r in results for cf in r["counterfactuals"] for f in cf["changes"]}


def test_counterfactuals_never_change_a_sensitive_feature_unless_the_owner_allows_it(tmp_path: Path) -> None:
    _, plain = _register(tmp_path, "plain")
    assert "age" in _changed(plain)  # the model's strongest lever, when nothing freezes it
    _, frozen = _register(
        tmp_path, "frozen", sensitive={"age": EDGES}, constraints={"age": {"direction": "increase"}}
    )
    assert frozen.schema.constraint("age").direction == "increase"
    assert "age" not in _changed(frozen)
    _, allowed = _register(
        tmp_path,
        "allowed",
        sensitive={"age": EDGES},
        constraints={"age": {"mutable": True, "direction": "increase"}},
    )
    assert allowed.schema.constraint("age").mutable
    assert "age" in _changed(allowed)


def test_a_request_cannot_unfreeze_a_sensitive_feature(tmp_path: Path) -> None:
    _, frozen = _register(tmp_path, "frozen", sensitive={"age": EDGES})
    with pytest.raises(OptionError, match="sensitive") as info:
        _changed(frozen, constraints={"age": {"mutable": True}})
    assert info.value.field == "options.counterfactual.constraints.age.mutable"
    assert "age" not in _changed(frozen, constraints={"age": {"range": [0, 100]}})


def test_the_german_credit_demo_names_sex_and_age_bands(client, german_row: dict) -> None:
    body = client.get("/v1/models/german-credit").get_json()
    assert body["sensitive"] == {"sex": None, "age": EDGES}
    assert body["constraints"]["sex"]["mutable"] is False and body["constraints"]["age"]["mutable"] is True
    spec = client.get("/openapi.json").get_json()
    assert "sensitive" in spec["components"]["schemas"]["ModelDescription"]["properties"]
    refused = client.post(
        "/v1/models/german-credit:explain",
        json={
            "instances": [german_row],
            "methods": ["counterfactual"],
            "options": {"counterfactual": {"constraints": {"sex": {"mutable": True}}}},
        },
    )
    assert refused.status_code == 422, refused.get_json()
    assert list(refused.get_json()["errors"]) == ["options.counterfactual.constraints.sex.mutable"]
