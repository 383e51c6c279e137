"""The ``counterfactual`` method: validity, constraints, determinism, budgets and option validation."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from explain_service.errors import OptionError
from explain_service.explainers._tabular import background_stats, row_dicts
from explain_service.explainers.base import canonical_json
from explain_service.explainers.counterfactual import CounterfactualExplainer, CounterfactualOptions
from tests._german_fixture import PipelineModel, diabetes_model, german_model, iris_model, mixed_model

EXPLAINER = CounterfactualExplainer()


def options(**given: Any) -> dict[str, Any]:
    return CounterfactualOptions().load(given)


def rows_predicted(model: PipelineModel, label: str, n: int, seed: int = 0) -> pd.DataFrame:
    proba = model.predict_proba(model.data)
    picked = model.data[proba.argmax(axis=1) == model.class_names.index(label)]
    return model.schema.coerce(picked.sample(n=n, random_state=seed).reset_index(drop=True))


def rescore(model: PipelineModel, result: dict[str, Any]) -> pd.DataFrame:
    frame = pd.DataFrame([c["instance"] for c in result["counterfactuals"]], columns=model.schema.names)
    return model.schema.coerce(frame)


def test_every_counterfactual_reaches_the_target_when_rescored() -> None:
    model = german_model()
    rows = rows_predicted(model, "bad", 5)
    good = model.class_names.index("good")
    results = EXPLAINER.explain(model, rows, np.full(len(rows), good), options())
    originals = row_dicts(rows, model.schema.features)
    for i, result in enumerate(results):
        assert result["target"] == "good"
        assert 1 <= len(result["counterfactuals"]) <= 4
        proba = model.predict_proba(rescore(model, result))
        assert (proba.argmax(axis=1) == good).all()
        for cf, p in zip(result["counterfactuals"], proba, strict=True):
            assert cf["prediction"]["label"] == "good"
            assert cf["prediction"]["probabilities"]["good"] == pytest.approx(p[good], abs=1e-6)
            original = originals[i]
            assert cf["changes"] == {
                k: {"from": original[k], "to": v} for k, v in cf["instance"].items() if v != original[k]
            }
        assert result["metrics"]["validity"] == 1.0


def test_target_defaults_to_the_favourable_class() -> None:
    model = german_model()
    result = EXPLAINER.explain(model, rows_predicted(model, "bad", 1), None, options())[0]
    assert result["target"] == "good" and result["counterfactuals"]


def test_metrics_describe_the_returned_set() -> None:
    model = german_model()
    rows = rows_predicted(model, "bad", 1, seed=3)
    result = EXPLAINER.explain(model, rows, None, options())[0]
    cfs = result["counterfactuals"]
    stats = {s.name: s for s in background_stats(model)}

    def distance(a: dict[str, Any], b: dict[str, Any]) -> float:
        return sum(
            abs(a[n] - b[n]) / stats[n].mad if stats[n].feature.is_numeric else float(a[n] != b[n]) for n in a
        )

    original = row_dicts(rows, model.schema.features)[0]
    metrics = result["metrics"]
    assert metrics["sparsity"] == pytest.approx(np.mean([len(c["changes"]) for c in cfs]))
    assert metrics["proximity"] == pytest.approx(np.mean([distance(c["instance"], original) for c in cfs]))
    pairs = [distance(a["instance"], b["instance"]) for k, a in enumerate(cfs) for b in cfs[k + 1 :]]
    assert metrics["diversity"] == pytest.approx(np.mean(pairs))
    assert len({canonical_json(c["instance"]) for c in cfs}) == len(cfs)


def test_repeat_is_byte_identical() -> None:
    model = german_model()
    rows = rows_predicted(model, "bad", 3)
    first = EXPLAINER.explain(model, rows, None, options())
    again = CounterfactualExplainer().explain(model, rows.copy(), None, options())
    assert canonical_json(first) == canonical_json(again)
    assert all("seed" in r for r in first)


def test_explicit_seeds_are_reported_and_results_stay_valid() -> None:
    model = german_model()
    rows = rows_predicted(model, "bad", 1, seed=5)
    for seed in (1, 2):
        result = EXPLAINER.explain(model, rows, None, options(seed=seed))[0]
        assert result["seed"] == seed
        assert (model.predict_proba(rescore(model, result)).argmax(axis=1) == 1).all()


# --- constraints, as properties over random instances and random constraint sets ---------------------


@st.composite
def constraint_sets(draw: st.DrawFn, model: PipelineModel, row: pd.Series) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for feature in model.schema.features:
        choice = draw(st.sampled_from(["free", "free", "immutable", "direction", "range", "both"]))
        if choice == "free":
            continue
        if choice == "immutable":
            out[feature.name] = {"mutable": False}
            continue
        spec: dict[str, Any] = {}
        if choice in ("direction", "both") and feature.kind != "categorical":
            spec["direction"] = draw(st.sampled_from(["increase", "decrease"]))
        if choice in ("range", "both") and feature.is_numeric:
            lo_q, hi_q = sorted(draw(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2)))
            values = model.background[feature.name].to_numpy(dtype=float)
            spec["range"] = [float(np.quantile(values, lo_q)), float(np.quantile(values, hi_q))]
        if spec:
            out[feature.name] = spec
    return out


def check_constraints(
    model: PipelineModel, row: pd.Series, result: dict[str, Any], constraints: dict[str, dict[str, Any]]
) -> None:
    for cf in result["counterfactuals"]:
        assert list(cf["instance"]) == model.schema.names
        for feature in model.schema.features:
            name = feature.name
            before, after = row[name], cf["instance"][name]
            rule = {**model.schema.constraint(name).to_dict(), **constraints.get(name, {})}
            changed = after != before
            assert changed == (name in cf["changes"])
            if not rule.get("mutable", True):
                assert not changed, f"immutable {name} changed"
            if feature.kind == "integer":
                assert type(after) is int
            elif feature.kind == "numeric":
                assert type(after) is float
            elif feature.kind == "boolean":
                assert type(after) is bool
            else:
                assert type(after) is str and after in (feature.categories or ())
            if changed and rule.get("direction") == "increase":
                assert after > before, f"{name} fell"
            if changed and rule.get("direction") == "decrease":
                assert after < before, f"{name} rose"
            if changed and rule.get("range") is not None and feature.is_numeric:
                lo, hi = rule["range"]
                assert lo <= after <= hi, f"{name}={after} outside {rule['range']}"
            if changed and feature.is_numeric:
                assert feature.min <= after <= feature.max


@pytest.mark.parametrize("kind", ["german", "mixed"], ids=["german-xgboost", "mixed-kinds"])
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_constraints_hold_for_random_instances_and_constraint_sets(kind: str, data: st.DataObject) -> None:
    model = german_model() if kind == "german" else mixed_model()
    index = data.draw(st.integers(0, len(model.data) - 1), label="row")
    rows = model.schema.coerce(model.data.iloc[[index]].reset_index(drop=True))
    row = rows.iloc[0]
    constraints = data.draw(constraint_sets(model, row), label="constraints")
    count = data.draw(st.integers(1, 5), label="count")
    result = EXPLAINER.explain(model, rows, None, options(count=count, constraints=constraints))[0]
    check_constraints(model, row, result, constraints)
    assert len(result["counterfactuals"]) <= count
    if len(result["counterfactuals"]) < count:
        assert result["message"]
    if result["counterfactuals"]:
        target = model.class_names.index(result["target"])
        assert (model.predict_proba(rescore(model, result)).argmax(axis=1) == target).all()


def test_manifest_constraints_hold_by_default() -> None:
    model = german_model()  # manifest: sex immutable, age only increases
    rows = rows_predicted(model, "bad", 8, seed=4)
    for i, result in enumerate(EXPLAINER.explain(model, rows, None, options())):
        check_constraints(model, rows.iloc[i], result, {})


def test_one_way_boolean_is_never_switched_back() -> None:
    model = mixed_model()
    declined = rows_predicted(model, "declined", 40)
    rows = declined[declined["defaulted"]].head(4).reset_index(drop=True)
    free = EXPLAINER.explain(model, rows, None, options())
    assert any("defaulted" in cf["changes"] for r in free for cf in r["counterfactuals"])
    held = EXPLAINER.explain(model, rows, None, options(constraints={"defaulted": {"direction": "increase"}}))
    assert all("defaulted" not in cf["changes"] for r in held for cf in r["counterfactuals"])
    assert any(r["counterfactuals"] for r in held)


def test_request_overrides_merge_with_the_manifest_key_by_key() -> None:
    model = german_model()
    rows = rows_predicted(model, "bad", 6, seed=6)
    asked = {"age": {"range": [18.0, 60.0]}, "sex": {"mutable": True}}
    results = EXPLAINER.explain(model, rows, None, options(constraints=asked, immutable=["duration"]))
    for i, result in enumerate(results):
        row = rows.iloc[i]
        for cf in result["counterfactuals"]:
            assert cf["instance"]["duration"] == row["duration"]
            if "age" in cf["changes"]:
                assert (
                    row["age"] < cf["instance"]["age"] <= 60
                )  # manifest direction kept, request range added


def test_everything_immutable_returns_none_with_a_message() -> None:
    model = german_model()
    rows = rows_predicted(model, "bad", 1)
    result = EXPLAINER.explain(model, rows, None, options(immutable=model.schema.names))[0]
    assert result["counterfactuals"] == []
    assert "found 0 of 4" in result["message"] and "no feature may change" in result["message"]
    assert result["metrics"] == {"validity": None, "sparsity": None, "proximity": None, "diversity": None}


def test_unreachable_goal_returns_fewer_with_a_message() -> None:
    model = german_model()
    rows = rows_predicted(model, "bad", 1, seed=2)
    only = [n for n in model.schema.names if n != "housing"]
    result = EXPLAINER.explain(model, rows, None, options(immutable=only, count=4))[0]
    assert len(result["counterfactuals"]) < 4
    assert result["message"].startswith(f"found {len(result['counterfactuals'])} of 4")


def test_instance_already_at_the_target_gets_a_message() -> None:
    model = german_model()
    rows = rows_predicted(model, "good", 1)
    result = EXPLAINER.explain(model, rows, np.array([1]), options())[0]
    assert result["counterfactuals"] == [] and "already predicted as 'good'" in result["message"]


def test_multiclass_reaches_the_requested_class() -> None:
    model = iris_model()
    rows = rows_predicted(model, "setosa", 2)
    results = EXPLAINER.explain(model, rows, np.array([2, 1]), options(count=3))
    for result, target in zip(results, (2, 1), strict=True):
        assert result["target"] == model.class_names[target]
        assert result["counterfactuals"]
        assert (model.predict_proba(rescore(model, result)).argmax(axis=1) == target).all()


def test_multiclass_without_target_picks_the_most_likely_other_class() -> None:
    model = iris_model()  # no favourable class
    rows = rows_predicted(model, "virginica", 1)
    proba = model.predict_proba(rows)[0]
    second = model.class_names[int(np.argsort(-proba)[1])]
    assert EXPLAINER.explain(model, rows, None, options())[0]["target"] == second


def test_regression_reaches_the_desired_range() -> None:
    model = diabetes_model()
    rows = model.schema.coerce(model.data.iloc[[0, 1, 2]].reset_index(drop=True))
    results = EXPLAINER.explain(model, rows, None, options(desired_range=[200.0, 260.0]))
    for i, result in enumerate(results):
        assert result["target"] is None and result["desired_range"] == [200.0, 260.0]
        values = model.predict_value(rescore(model, result)) if result["counterfactuals"] else np.array([])
        assert all(200.0 <= v <= 260.0 for v in values)
        for cf, v in zip(result["counterfactuals"], values, strict=True):
            assert cf["prediction"] == {"value": pytest.approx(v)}
            assert "age" not in cf["changes"] and "sex" not in cf["changes"]  # immutable in the manifest
        check_constraints(model, rows.iloc[i], result, {})
    assert any(r["counterfactuals"] for r in results)


def test_regression_requires_a_desired_range() -> None:
    model = diabetes_model()
    rows = model.schema.coerce(model.data.iloc[[0]].reset_index(drop=True))
    with pytest.raises(OptionError, match="required for regression") as info:
        EXPLAINER.explain(model, rows, None, options())
    assert info.value.field == "options.counterfactual.desired_range"
    assert info.value.status == 422
    assert info.value.errors == {
        "options.counterfactual.desired_range": ["required for regression models, as [low, high]"]
    }


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"desired_range": [0.0, 1.0]}, "options.counterfactual.desired_range"),
        ({"constraints": {"salary": {"mutable": False}}}, "options.counterfactual.constraints"),
        ({"immutable": ["salary"]}, "options.counterfactual.immutable"),
        (
            {"constraints": {"purpose": {"direction": "increase"}}},
            "options.counterfactual.constraints.purpose.direction",
        ),
        (
            {"constraints": {"housing": {"range": [0.0, 1.0]}}},
            "options.counterfactual.constraints.housing.range",
        ),
    ],
    ids=[
        "range-for-classifier",
        "unknown-feature",
        "unknown-immutable",
        "direction-on-category",
        "range-on-category",
    ],
)
def test_options_that_do_not_fit_the_model_raise_option_error(given: dict, field: str) -> None:
    model = german_model()
    with pytest.raises(OptionError) as info:
        EXPLAINER.explain(model, rows_predicted(model, "bad", 1), None, options(**given))
    assert info.value.field == field


class SlowModel(PipelineModel):
    """The German model, 30 ms slower per call, counting its calls."""

    calls = 0

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        self.calls += 1
        time.sleep(0.03)
        return super().predict_proba(rows)


def test_time_budget_stops_the_search_and_says_so() -> None:
    base = german_model()
    rows = rows_predicted(base, "bad", 1, seed=6)  # a hard case: several rounds without success
    hard = options(
        max_changes=6,
        constraints={n: {"mutable": False} for n in ("credit_amount", "duration", "checking_account")},
    )
    patient = SlowModel(**{f: getattr(base, f) for f in base.__dataclass_fields__})
    EXPLAINER.explain(patient, rows, None, {**hard, "time_budget_ms": 5000})
    assert patient.calls > 2

    hurried = SlowModel(**{f: getattr(base, f) for f in base.__dataclass_fields__})
    start = time.perf_counter()
    result = EXPLAINER.explain(hurried, rows, None, {**hard, "time_budget_ms": 10})[0]
    assert time.perf_counter() - start < 0.09 * patient.calls
    assert hurried.calls <= 2  # the first call, then at most the refinement call
    assert "time budget ran out" in result["message"]


def test_options_have_defaults() -> None:
    assert options() == {
        "count": 4,
        "desired_range": None,
        "constraints": {},
        "immutable": [],
        "max_changes": 4,
        "time_budget_ms": 500,
        "seed": None,
    }


@pytest.mark.parametrize(
    ("given", "path"),
    [
        ({"count": 11}, ["count"]),
        ({"count": 0}, ["count"]),
        ({"time_budget_ms": 60_000}, ["time_budget_ms"]),
        ({"desired_range": [1.0, 2.0, 3.0]}, ["desired_range"]),
        ({"desired_range": [3.0, 1.0]}, ["desired_range"]),
        ({"constraints": {"age": {"direction": "up"}}}, ["constraints", "age", "value", "direction"]),
        ({"constraints": {"age": {"range": [9.0, 1.0]}}}, ["constraints", "age", "value", "range"]),
        ({"constraints": {"age": {"speed": 1}}}, ["constraints", "age", "value", "speed"]),
        ({"max_changes": 0}, ["max_changes"]),
        ({"method": "genetic"}, ["method"]),
    ],
    ids=[
        "count-over-cap",
        "count-zero",
        "budget-over-cap",
        "range-length",
        "range-order",
        "direction",
        "constraint-range-order",
        "constraint-unknown-key",
        "max-changes",
        "unknown",
    ],
)
def test_bad_options_raise_validation_errors_naming_the_field(given: dict, path: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        CounterfactualOptions().load(given)
    node: Any = info.value.messages
    for key in path:
        assert key in node, (path, info.value.messages)
        node = node[key]


def test_supports_classifiers_and_regressors() -> None:
    assert EXPLAINER.supports(german_model()) and EXPLAINER.supports(diabetes_model())
