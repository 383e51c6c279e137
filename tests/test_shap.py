"""SHAP values equal independent references and add up to the model's own output."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shap

from explain_service.errors import OptionError
from explain_service.explainers.base import canonical_json
from explain_service.explainers.shap import ShapExplainer, supported_outputs
from explain_service.registry.model import LoadedModel

EXPLAINER = ShapExplainer()
ROWS = 12


def rows_of(model: LoadedModel) -> pd.DataFrame:
    return model.background.iloc[:ROWS].reset_index(drop=True)


def predicted(model: LoadedModel, rows: pd.DataFrame) -> np.ndarray | None:
    return model.predict_proba(rows).argmax(axis=1) if model.is_classifier else None


def explain(model: LoadedModel, rows: pd.DataFrame, targets, **options) -> list[dict]:
    opts = {"output": None, "max_evals": 20_000, "seed": None, **options}
    return EXPLAINER.explain(model, rows, targets, opts)


def as_matrix(results: list[dict], model: LoadedModel) -> np.ndarray:
    return np.array([[r["values"][n] for n in model.schema.names] for r in results])


def group_columns(model: LoadedModel, column_values: np.ndarray) -> np.ndarray:
    """Independent grouping of transformed columns by their ColumnTransformer output names."""
    names = list(model.preprocessor.get_feature_names_out())
    out = np.zeros((column_values.shape[0], len(model.schema.names)))
    for j, col in enumerate(names):
        raw = col.split("__", 1)[1]
        owner = max((n for n in model.schema.names if raw == n or raw.startswith(n + "_")), key=len)
        out[:, model.schema.names.index(owner)] += column_values[:, j]
    return out


ALL_CASES = [
    ("german-credit", "log_odds"),
    ("german-credit", "probability"),
    ("german-credit-linear", "log_odds"),
    ("german-credit-linear", "probability"),
    ("breast-cancer-forest", "probability"),
    ("diabetes-gbr", "raw"),
    ("wine-mlp", "probability"),
    ("wine-mlp", "log_odds"),
]


@pytest.mark.parametrize(("name", "output"), ALL_CASES, ids=[f"{n}-{o}" for n, o in ALL_CASES])
def test_local_accuracy_against_the_models_own_output(registry, name: str, output: str) -> None:
    model = registry.get(name)
    rows = rows_of(model)
    targets = predicted(model, rows)
    results = explain(model, rows, targets, output=output)
    est = model.estimator
    X = model.transform(rows)
    if not model.is_classifier:
        own = est.predict(X)
    elif output == "probability":
        own = model.predict_proba(rows)[np.arange(ROWS), targets]
    elif model.family == "agnostic":
        p = model.predict_proba(rows)[np.arange(ROWS), targets]
        own = np.log(p / (1 - p))
    else:
        margin = model.margin_matrix(X)
        own = (
            np.where(targets == 1, margin, -margin) if margin.ndim == 1 else margin[np.arange(ROWS), targets]
        )
    for r, expected in zip(results, own, strict=True):
        assert r["output"] == output
        total = r["base_value"] + sum(r["values"].values())
        tolerance = 1e-5 * max(1.0, abs(expected))
        assert abs(total - expected) <= tolerance
        assert abs(r["additivity_residual"]) <= tolerance
        assert list(r["values"]) == model.schema.names


def test_xgboost_log_odds_equal_pred_contribs_summed_per_feature(registry) -> None:
    import xgboost as xgb

    model = registry.get("german-credit")
    rows = rows_of(model)
    X = model.preprocessor.transform(rows)
    contribs = model.estimator.get_booster().predict(xgb.DMatrix(X), pred_contribs=True)
    expected = group_columns(model, contribs[:, :-1])
    got = as_matrix(explain(model, rows, np.ones(ROWS, dtype=int)), model)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # and the same as shap's own TreeExplainer on the transformed matrix
    ref = shap.TreeExplainer(model.estimator).shap_values(X)
    np.testing.assert_allclose(got, group_columns(model, ref), rtol=0, atol=1e-5)


def test_target_class_zero_mirrors_class_one_in_log_odds(registry) -> None:
    model = registry.get("german-credit")
    rows = rows_of(model)
    one = explain(model, rows, np.ones(ROWS, dtype=int))
    zero = explain(model, rows, np.zeros(ROWS, dtype=int))
    for a, b in zip(one, zero, strict=True):
        assert a["target"] == "good" and b["target"] == "bad"
        assert b["base_value"] == pytest.approx(-a["base_value"])
        for n in model.schema.names:
            assert b["values"][n] == pytest.approx(-a["values"][n])


def test_xgboost_probability_equals_shap_interventional(registry) -> None:
    model = registry.get("german-credit")
    rows = rows_of(model)
    bg = model.preprocessor.transform(model.background.iloc[:100])
    ref = shap.TreeExplainer(
        model.estimator, data=bg, model_output="probability", feature_perturbation="interventional"
    ).shap_values(model.preprocessor.transform(rows))
    got = as_matrix(explain(model, rows, np.ones(ROWS, dtype=int), output="probability"), model)
    np.testing.assert_allclose(got, group_columns(model, ref), rtol=0, atol=1e-7)


def test_linear_equals_shap_linear_explainer(registry) -> None:
    model = registry.get("german-credit-linear")
    rows = rows_of(model)
    bg = model.preprocessor.transform(model.background)
    masker = shap.maskers.Independent(bg, max_samples=len(bg))
    ref = shap.LinearExplainer(model.estimator, masker).shap_values(model.preprocessor.transform(rows))
    got = as_matrix(explain(model, rows, np.ones(ROWS, dtype=int)), model)
    np.testing.assert_allclose(got, group_columns(model, ref), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["breast-cancer-forest", "diabetes-gbr"])
def test_sklearn_trees_equal_shap_tree_explainer(registry, name: str) -> None:
    model = registry.get(name)
    rows = rows_of(model)
    ref = np.asarray(shap.TreeExplainer(model.estimator).shap_values(rows.to_numpy(dtype=float)))
    targets = predicted(model, rows)
    got = as_matrix(explain(model, rows, targets), model)
    if ref.ndim == 3:
        ref = ref[np.arange(ROWS), :, targets]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)


def test_model_agnostic_exact_enumeration_equals_shap_exact_explainer(registry) -> None:
    model = registry.get("wine-mlp")
    rows = rows_of(model).iloc[:2]
    targets = predicted(model, rows)
    results = explain(model, rows, targets, max_evals=200_000)
    assert {r["algorithm"] for r in results} == {"exact_enumeration"}
    bg = model.background.sample(16, random_state=0)
    names = model.schema.names
    for i, r in enumerate(results):
        t = int(targets[i])

        def f(X: np.ndarray, t: int = t) -> np.ndarray:
            return model.estimator.predict_proba(
                model.preprocessor.transform(pd.DataFrame(X, columns=names))
            )[:, t]

        ex = shap.explainers.Exact(f, shap.maskers.Independent(bg.to_numpy(), max_samples=16))
        ref = ex(rows.iloc[[i]].to_numpy()).values[0]
        np.testing.assert_allclose([r["values"][n] for n in names], ref, rtol=0, atol=1e-9)


def test_permutation_estimate_is_close_to_exact_and_exactly_additive(registry) -> None:
    model = registry.get("wine-mlp")
    rows = rows_of(model).iloc[:2]
    targets = predicted(model, rows)
    exact = explain(model, rows, targets, max_evals=200_000)
    approx = explain(model, rows, targets, max_evals=40_000, seed=7)
    for e, a in zip(exact, approx, strict=True):
        assert a["algorithm"] == "permutation" and a["params"]["seed"] == 7
        assert abs(a["additivity_residual"]) < 1e-12
        diff = max(abs(e["values"][n] - a["values"][n]) for n in model.schema.names)
        assert diff < 0.02


def test_same_request_gives_byte_identical_output(registry) -> None:
    for name in ("german-credit", "wine-mlp"):
        model = registry.get(name)
        rows = rows_of(model).iloc[:3]
        targets = predicted(model, rows)
        assert canonical_json(explain(model, rows, targets)) == canonical_json(explain(model, rows, targets))


def test_multiclass_explains_the_requested_class(registry) -> None:
    model = registry.get("wine-mlp")
    rows = rows_of(model).iloc[:2]
    for t in range(3):
        results = explain(model, rows, np.full(2, t))
        proba = model.predict_proba(rows)[:, t]
        for r, p in zip(results, proba, strict=True):
            assert r["target"] == model.class_names[t]
            assert r["base_value"] + sum(r["values"].values()) == pytest.approx(p, abs=1e-9)


def test_forest_refuses_log_odds_rather_than_falling_back(registry) -> None:
    model = registry.get("breast-cancer-forest")
    assert supported_outputs(model) == ("probability",)
    with pytest.raises(OptionError, match="not available") as info:
        explain(model, rows_of(model), np.zeros(ROWS, dtype=int), output="log_odds")
    assert info.value.errors.keys() == {"options.shap.output"}
