"""Models the latency benchmarks share: German credit (demo) and a small credit model.

The small model has 7 raw features (4 numeric, 3 categorical), a one-hot pipeline and XGBoost with
150 trees of depth 4: the size of many scoring models a calling system puts in its decision path,
where fixed per-request costs weigh more than on German credit. Its data are synthetic and seeded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from explain_service.registry.demo import build_demo
from explain_service.registry.store import ModelRegistry, register_model

MODELS = Path("bench/out/models")
SMALL = "small-credit"
SMALL_CATEGORIES = {
    "housing": ["own", "rent", "free"],
    "purpose": ["car", "education", "furniture", "business", "repairs"],
    "employment": ["none", "short", "long"],
}
SMALL_NUMERIC = ["income", "debt_ratio", "age", "months_at_address"]


def small_frame(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Seeded synthetic applicants and their outcome (1 = repaid)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "income": rng.lognormal(10.3, 0.5, n).round(0),
            "housing": rng.choice(SMALL_CATEGORIES["housing"], n),
            "debt_ratio": rng.beta(2, 5, n).round(3),
            "purpose": rng.choice(SMALL_CATEGORIES["purpose"], n),
            "age": rng.integers(19, 76, n).astype(float),
            "employment": rng.choice(SMALL_CATEGORIES["employment"], n),
            "months_at_address": rng.integers(0, 240, n).astype(float),
        }
    )
    score = (
        0.8 * (np.log(frame["income"]) - 10.3)
        - 3.0 * frame["debt_ratio"]
        + 0.02 * (frame["age"] - 40)
        + np.where(frame["employment"] == "long", 0.7, np.where(frame["employment"] == "none", -0.8, 0.0))
        + np.where(frame["housing"] == "own", 0.3, 0.0)
        + rng.normal(0, 0.7, n)
    )
    return frame, (score > -0.6).astype(int).to_numpy()


def small_pipeline() -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder
    from xgboost import XGBClassifier

    pre = ColumnTransformer(
        [
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                list(SMALL_CATEGORIES),
            ),
            ("numeric", "passthrough", SMALL_NUMERIC),
        ]
    )
    booster = XGBClassifier(n_estimators=150, max_depth=4, learning_rate=0.1, random_state=0, n_jobs=1)
    return Pipeline([("preprocess", pre), ("model", booster)])


def build_models(models_dir: Path = MODELS) -> None:
    """German credit and the small model under ``models_dir`` (kept when already there)."""
    build_demo(models_dir, only=["german-credit"])
    if not (models_dir / SMALL).exists():
        X, y = small_frame()
        register_model(
            small_pipeline().fit(X, y),
            SMALL,
            "1",
            background=X.iloc[:500],
            class_names=["declined", "repaid"],
            favorable="repaid",
            models_dir=models_dir,
            description="Synthetic credit scoring: 7 raw features, one-hot, XGBoost 150 trees of depth 4.",
        )


def instances(model: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` background rows of ``model`` (drawn with replacement) as JSON-ready dicts."""
    rows = model.background.sample(n, replace=True, random_state=seed)
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows.to_dict("records")
    ]


def load(name: str, models_dir: Path = MODELS) -> Any:
    return ModelRegistry(models_dir).get(name)
