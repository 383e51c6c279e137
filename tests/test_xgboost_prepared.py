"""One ``DMatrix`` per request: the prediction and SHAP share it, and the answers do not change.

A prepared request builds XGBoost's ``DMatrix`` once; the probabilities, the contributions and
the margin SHAP checks itself against are all predicted from it. These tests hold the shared path
to the bytes of the separate calls it replaced (``inplace_predict`` for the probabilities, a fresh
``DMatrix`` for the contributions and the margin), on the demo's scikit-learn wrapper and on
plain boosters (binary, multiclass, regression).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from explain_service.explainers.base import canonical_json
from explain_service.explainers.shap import ShapExplainer
from explain_service.registry.model import LoadedModel
from explain_service.registry.store import ModelRegistry, register_model
from explain_service.service import ExplainService

OPTIONS = {"output": None, "max_evals": 20_000, "seed": None}


def _frame(n: int = 300, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.uniform(0, 5, n), "c": rng.normal(2, 1, n)})


@pytest.fixture(scope="module")
def boosters(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """Plain XGBoost boosters: binary, three classes, regression (seeded, tiny)."""
    root: Path = tmp_path_factory.mktemp("boosters")
    X = _frame()
    score = X["a"] - 0.5 * X["b"] + 0.3 * X["c"]
    cases = {
        "binary": (
            {"objective": "binary:logistic"},
            (score > 0).astype(int),
            "classification",
            ["no", "yes"],
        ),
        "three": (
            {"objective": "multi:softprob", "num_class": 3},
            np.digitize(score, [-1.0, 1.0]),
            "classification",
            ["low", "mid", "high"],
        ),
        "value": ({"objective": "reg:squarederror"}, score, "regression", None),
    }
    for name, (params, y, task, classes) in cases.items():
        booster = xgb.train({**params, "max_depth": 3, "seed": 0}, xgb.DMatrix(X, label=y), 20)
        register_model(booster, name, "1", background=X, task=task, class_names=classes, models_dir=root)
    return ModelRegistry(root)


def _rows(model: LoadedModel, n: int) -> pd.DataFrame:
    return model.background.iloc[:n].reset_index(drop=True)


def _models(registry: ModelRegistry, boosters: ModelRegistry) -> list[LoadedModel]:
    return [registry.get("german-credit"), *(boosters.get(n) for n in ("binary", "three", "value"))]


IDS = ["xgb-classifier", "booster-binary", "booster-three", "booster-value"]


@pytest.mark.parametrize("case", range(4), ids=IDS)
@pytest.mark.parametrize("n", [1, 25])
def test_predictions_on_prepared_rows_are_the_bytes_of_the_separate_calls(
    registry: ModelRegistry, boosters: ModelRegistry, case: int, n: int
) -> None:
    model = _models(registry, boosters)[case]
    rows = _rows(model, n)
    prepared = model.prepare(rows)
    if model.is_classifier:
        shared = model.predict_proba(prepared)
        if model.library == "xgboost":
            p = model.booster().inplace_predict(model.transform(rows), validate_features=False)
            separate = np.vstack((1 - p, p)).T
        else:
            separate = model.proba_matrix(model.transform(rows))
    else:
        shared = model.predict_value(prepared)
        separate = model.value_matrix(model.transform(rows))
    assert shared.dtype == separate.dtype and shared.shape == separate.shape
    assert shared.tobytes() == separate.tobytes()


@pytest.mark.parametrize("case", range(4), ids=IDS)
def test_shap_after_the_prediction_is_byte_identical_to_shap_alone(
    registry: ModelRegistry, boosters: ModelRegistry, case: int
) -> None:
    model = _models(registry, boosters)[case]
    rows = _rows(model, 12)
    service = ExplainService()
    prepared = model.prepare(rows)
    pred = service.predict(model, prepared)  # fills XGBoost's margin cache of the shared DMatrix
    shared = ShapExplainer().explain(model, prepared, pred.classes, OPTIONS)
    alone = ShapExplainer().explain(model, rows, pred.classes, OPTIONS)  # a DMatrix of its own
    assert canonical_json(shared) == canonical_json(alone)


def test_one_dmatrix_per_prepared_request(registry: ModelRegistry) -> None:
    model = registry.get("german-credit")
    prepared = model.prepare(_rows(model, 3))
    assert model.dmatrix_of(prepared) is model.dmatrix_of(prepared)
    assert model.dmatrix_of(model.prepare(_rows(model, 3))) is not model.dmatrix_of(prepared)
    other = model.prepare(_rows(model, 3))
    object.__setattr__(other, "model_sha256", "another model")  # another model's rows are not reused
    assert model.dmatrix_of(other) is not model.dmatrix_of(other)


def test_the_residual_is_measured_against_the_models_margin_not_the_contributions(
    registry: ModelRegistry,
) -> None:
    model = registry.get("german-credit")
    rows = _rows(model, 40)
    prepared = model.prepare(rows)
    ExplainService().predict(model, prepared)  # as a request does: the margin is then XGBoost's cached one
    results = ShapExplainer().explain(model, prepared, np.ones(40, dtype=int), OPTIONS)
    margin = model.booster().predict(xgb.DMatrix(model.transform(rows)), output_margin=True)
    for r, m in zip(results, margin.astype(np.float64), strict=True):
        expected = m - r["base_value"] - math.fsum(r["values"].values())
        assert r["additivity_residual"] == expected
    # float32 TreeSHAP does not add up to the float32 margin exactly: a residual of zero on
    # every row would mean the output was taken from the contributions themselves.
    assert any(r["additivity_residual"] != 0.0 for r in results)
