"""The compiled one-row transform on rows with missing values: exactly scikit-learn's, or not used."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, StandardScaler

from explain_service.registry import register_model
from explain_service.registry.schema import frame_from_records
from explain_service.registry.store import ModelRegistry

N = 600
NUMERIC = ["income", "debt", "age"]
CATEGORICAL = ["region", "housing"]


def applicants(n: int, seed: int, *, nan: float = 0.2) -> tuple[pd.DataFrame, np.ndarray]:
    """Numeric and categorical columns with about ``nan`` of each cell missing, and a seeded label."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "income": rng.gamma(3.0, 900.0, n).round(2),
            "debt": rng.normal(0.3, 0.2, n),
            "age": rng.integers(19, 75, n).astype(float),
            "region": rng.choice(["north", "south", "east"], n).astype(object),
            "housing": rng.choice(["own", "rent", "free"], n).astype(object),
        }
    )
    score = X.income / 2000 - 2 * X.debt + (X.region == "north") * 0.5 + rng.normal(0, 0.3, n)
    y = np.where(score > score.median(), "repaid", "default")
    for name in X.columns:
        X.loc[rng.random(n) < nan, name] = np.nan
    return X, y


def imputed_onehot(final: Any) -> Pipeline:
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    pre = ColumnTransformer([("num", numeric, NUMERIC), ("cat", categorical, CATEGORICAL)])
    return Pipeline([("pre", pre), ("model", final)])


def nan_as_category(final: Any) -> Pipeline:
    """NaN kept: OneHot gives it its own column, MinMax carries NaN to a model that takes it."""
    pre = ColumnTransformer(
        [
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATEGORICAL),
            ("num", MinMaxScaler(), NUMERIC),
        ]
    )
    return Pipeline([("pre", pre), ("model", final)])


def ordinal_with_constant_fill(final: Any) -> Pipeline:
    pre = ColumnTransformer(
        [
            ("cat", OrdinalEncoder(), CATEGORICAL),
            ("num", SimpleImputer(strategy="constant", fill_value=-1.0), NUMERIC),
        ]
    )
    return Pipeline([("pre", pre), ("model", final)])


PIPELINES: dict[str, Callable[[], Pipeline]] = {
    "impute-scale-onehot-logistic": lambda: imputed_onehot(LogisticRegression(max_iter=500)),
    "onehot-nan-minmax-hgb": lambda: nan_as_category(
        HistGradientBoostingClassifier(max_iter=30, random_state=0)
    ),
    "ordinal-nan-constant-hgb": lambda: ordinal_with_constant_fill(
        HistGradientBoostingClassifier(max_iter=30, random_state=0)
    ),
}


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRegistry, dict[str, Pipeline]]:
    root = tmp_path_factory.mktemp("nan-pipelines")
    X, y = applicants(N, seed=0)
    fitted = {}
    for name, build in PIPELINES.items():
        fitted[name] = build().fit(X, y)
        register_model(fitted[name], name, "1", background=X.iloc[:200], models_dir=root)
    return ModelRegistry(root), fitted


def request_rows(model: Any, X: pd.DataFrame) -> pd.DataFrame:
    """``X`` as a request's typed rows: missing cells are None in the records, NaN in the frame."""
    records = [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in X.to_dict("records")]
    return frame_from_records(model.schema, records)


@pytest.mark.parametrize("name", list(PIPELINES), ids=list(PIPELINES))
def test_the_compiled_transform_equals_sklearns_on_rows_with_missing_values(
    registered: tuple[ModelRegistry, dict[str, Pipeline]], name: str
) -> None:
    registry, fitted = registered
    model = registry.get(name)
    assert model.transform_path == "compiled"
    X, _ = applicants(300, seed=7, nan=0.3)
    X.loc[0, :] = np.nan  # a row with every feature missing
    rows = request_rows(model, X)
    assert rows.isna().any().all()
    expected = fitted[name][:-1].transform(X)
    for i in range(len(rows)):  # one row at a time, as requests come
        got = model.transform(rows.iloc[[i]])
        np.testing.assert_array_equal(got, expected[[i]])
    np.testing.assert_array_equal(model.proba_matrix(model.transform(rows)), fitted[name].predict_proba(X))


def test_missing_values_the_compiled_path_does_not_cover_keep_sklearns_path(tmp_path: Path) -> None:
    # The encoder never saw a missing region and codes it as an unknown category (-1): a rule the
    # compiled encoder does not implement. The complete background agrees on both paths; only the
    # check on the background with NaN injected tells them apart, so the model keeps scikit-learn's.
    X, y = applicants(N, seed=1)
    X["region"] = X["region"].fillna("north")
    columns = ["region", *NUMERIC]
    pre = ColumnTransformer(
        [
            ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), ["region"]),
            ("num", SimpleImputer(strategy="median"), NUMERIC),
        ]
    )
    pipe = Pipeline([("pre", pre), ("model", LogisticRegression(max_iter=500))]).fit(X[columns], y)
    register_model(
        pipe,
        "unknown-coded",
        "1",
        background=X[columns].iloc[:200],
        models_dir=tmp_path,
        feature_overrides={"region": {"missing": True}},
    )
    model = ModelRegistry(tmp_path).get("unknown-coded")
    assert model.schema["region"].missing and model.transform_path == "sklearn"
    rows = request_rows(model, X[columns].iloc[:20].assign(region=np.nan))
    np.testing.assert_array_equal(model.proba_matrix(model.transform(rows)), pipe.predict_proba(rows))


def test_complete_rows_still_take_the_compiled_path(
    registered: tuple[ModelRegistry, dict[str, Pipeline]],
) -> None:
    registry, fitted = registered
    model = registry.get("impute-scale-onehot-logistic")
    X, _ = applicants(50, seed=3, nan=0.0)
    np.testing.assert_array_equal(
        model.transform(request_rows(model, X)), fitted[model.name][:-1].transform(X)
    )
