"""SHAP, LIME and counterfactuals together over HTTP, for every demo model."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from tests.conftest import GERMAN_ROW

ALL = ["shap", "lime", "counterfactual"]


def post(client, name: str, body: dict):
    r = client.post(f"/v1/models/{name}:explain", data=orjson.dumps(body), content_type="application/json")
    return r.status_code, r.get_json()


def plain(row: pd.Series) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.to_dict().items()}


@pytest.mark.parametrize(
    "name", ["german-credit", "german-credit-linear", "breast-cancer-forest", "wine-mlp", "diabetes-gbr"]
)
def test_all_methods_answer_with_valid_counterfactuals(client, registry, name: str) -> None:
    model = registry.get(name)
    bg = model.background
    if model.is_classifier:
        pred = model.predict_proba(bg).argmax(axis=1)
        goal = model.class_names.index(model.favorable) if model.favorable else None
        # an instance that is not already in the class the counterfactuals aim for
        idx = int(np.flatnonzero(pred != (goal if goal is not None else -1))[0])
        # the largest budget: on a busy machine the default 500 ms can run out before one is found
        options: dict = {"counterfactual": {"time_budget_ms": 5000}}
    else:
        idx = 0
        value = float(model.predict_value(bg.iloc[[0]])[0])
        options = {"counterfactual": {"desired_range": [value + 20, value + 200], "time_budget_ms": 5000}}
    row = plain(bg.iloc[idx])
    status, answer = post(client, name, {"instances": [row], "methods": ALL, "options": options})
    assert status == 200, answer
    exp = answer["explanations"][0]
    assert set(exp) >= {"id", "prediction", "shap", "lime", "counterfactual", "reasons", "plots"}
    assert set(exp["plots"]) == {"shap_waterfall", "shap_bar", "lime_weights", "counterfactual_changes"}
    assert list(exp["lime"]["weights"]) == model.schema.names
    cf = exp["counterfactual"]
    assert cf["counterfactuals"], cf.get("message")
    assert cf["metrics"]["validity"] == 1.0
    frame = pd.DataFrame([c["instance"] for c in cf["counterfactuals"]])[model.schema.names]
    frame = model.schema.coerce(frame)
    for c in cf["counterfactuals"]:
        for feature, change in c["changes"].items():
            assert row[feature] == change["from"] and c["instance"][feature] == change["to"]
        assert {k for k in row if row[k] != c["instance"][k]} == set(c["changes"])
    if model.is_classifier:
        labels = [model.class_names[i] for i in model.predict_proba(frame).argmax(axis=1)]
        assert labels == [cf["target"]] * len(labels)
    else:
        lo, hi = cf["desired_range"]
        assert all(lo <= v <= hi for v in model.predict_value(frame))


def test_manifest_constraints_hold_over_http(client, registry) -> None:
    model = registry.get("german-credit")
    bg = model.background
    bad = bg[model.predict_proba(bg).argmax(axis=1) == 0]
    for _, r in bad.head(8).iterrows():
        row = plain(r)
        status, answer = post(client, "german-credit", {"instances": [row], "methods": ["counterfactual"]})
        assert status == 200
        for c in answer["explanations"][0]["counterfactual"]["counterfactuals"]:
            inst = c["instance"]
            assert inst["sex"] == row["sex"] and inst["job"] == row["job"]
            assert inst["age"] >= row["age"]
            assert 4 <= inst["duration"] <= 72 or inst["duration"] == row["duration"]


def test_lime_repeats_byte_for_byte_and_seeds_change_it(client) -> None:
    body = {"instances": [GERMAN_ROW], "methods": ["lime"]}
    first = post(client, "german-credit", body)[1]["explanations"][0]["lime"]
    second = post(client, "german-credit", body)[1]["explanations"][0]["lime"]
    assert orjson.dumps(first) == orjson.dumps(second)
    seeded = post(client, "german-credit", {**body, "options": {"lime": {"seed": 1}}})[1]["explanations"][0][
        "lime"
    ]
    assert seeded["seed"] == 1 and seeded["weights"] != first["weights"]
    stable = post(client, "german-credit", {**body, "options": {"lime": {"stability": 5}}})[1][
        "explanations"
    ][0]
    assert 0.0 <= stable["lime"]["stability"]["top_k_jaccard"] <= 1.0


def test_methods_share_one_prediction(client) -> None:
    status, answer = post(client, "german-credit", {"instances": [GERMAN_ROW], "methods": ALL})
    assert status == 200
    exp = answer["explanations"][0]
    assert exp["shap"]["target"] == exp["lime"]["target"] == exp["prediction"]["label"]


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("german-credit", {"lime": {"num_samples": 10**6}}, "options.lime.num_samples"),
        ("german-credit", {"lime": {"stability": 1}}, "options.lime.stability"),
        ("german-credit", {"counterfactual": {"count": 0}}, "options.counterfactual.count"),
        (
            "german-credit",
            {"counterfactual": {"time_budget_ms": 10**7}},
            "options.counterfactual.time_budget_ms",
        ),
        (
            "german-credit",
            {"counterfactual": {"desired_range": [1, 2]}},
            "options.counterfactual.desired_range",
        ),
        (
            "german-credit",
            {"counterfactual": {"constraints": {"height": {"mutable": False}}}},
            "options.counterfactual.constraints",
        ),
        ("diabetes-gbr", {}, "options.counterfactual.desired_range"),
    ],
    ids=[
        "lime-cap",
        "stability-one",
        "count-zero",
        "budget-cap",
        "range-on-classifier",
        "unknown-constraint",
        "regression-needs-range",
    ],
)
def test_bad_method_options_are_422_naming_the_field(
    client, registry, name: str, options: dict, field: str
) -> None:
    row = GERMAN_ROW if name == "german-credit" else plain(registry.get(name).background.iloc[0])
    status, answer = post(client, name, {"instances": [row], "methods": ALL, "options": options})
    assert status == 422, answer
    assert any(k.startswith(field) for k in answer["errors"]), answer
