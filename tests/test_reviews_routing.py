"""Routing to a human: review_rules in the manifest, and which rule fires for which explanation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from explain_service.errors import RegistrationError
from explain_service.registry.manifest import Manifest
from explain_service.registry.review_rules import DEFAULTS, ReviewRules, fired, manifest_sensitive
from explain_service.registry.store import ModelRegistry, read_manifest, register_model
from explain_service.service import ExplainService


def fitted() -> tuple[LogisticRegression, pd.DataFrame]:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=300),
            "x2": rng.normal(size=300),
            "group": rng.integers(0, 2, 300).astype(float),
        }
    )
    labels = np.where(frame["x1"] - 0.8 * frame["group"] + 0.3 * frame["x2"] > 0, "yes", "no")
    return LogisticRegression().fit(frame, labels), frame


def register(tmp_path: Path, rules: dict | None) -> tuple[ModelRegistry, pd.DataFrame]:
    model, frame = fitted()
    register_model(model, "routed", "1", background=frame.iloc[:100], models_dir=tmp_path, favorable="yes",
                   review_rules=rules)  # fmt: skip
    return ModelRegistry(tmp_path), frame


def test_defaults_are_stored_and_rules_are_checked(tmp_path: Path) -> None:
    register(tmp_path, {"probability_band": 0.05, "sensitive_features": ["group"]})
    stored = read_manifest(tmp_path / "routed" / "1").review_rules
    assert stored.to_dict() == {**DEFAULTS, "probability_band": 0.05, "sensitive_features": ["group"]}
    # A manifest written before routing existed reads with every default.
    raw = read_manifest(tmp_path / "routed" / "1").to_dict()
    del raw["review_rules"]
    assert Manifest.from_dict(raw).review_rules == ReviewRules()
    for bad, match in [
        ({"probability_band": 0.7}, "probability_band"),
        ({"sensitive_features": ["income"]}, "lacks"),
        ({"sensitive_in_top": -1}, "sensitive_in_top"),
        ({"threshold": 0.5}, "unknown review rule"),
    ]:
        with pytest.raises(RegistrationError, match=match):
            register(tmp_path / "bad", bad)
        assert not (tmp_path / "bad" / "routed").exists()


def test_each_rule_fires_on_its_own_condition(tmp_path: Path) -> None:
    registry, frame = register(tmp_path, {"sensitive_in_top": 1, "sensitive_features": ["group"]})
    model = registry.get("routed")
    rows = frame.iloc[:60].copy()
    rows.loc[rows.index[0], "x1"] = frame["x1"].max() + 5  # outside the registration range
    answer = ExplainService().explain(model, rows, ["shap"], record=False)
    proba = model.predict_proba(rows)
    for i, item in enumerate(answer["explanations"]):
        expected = []
        if abs(proba[i, 0] - proba[i, 1]) < 2 * 0.1:
            expected.append("probability_band")
        if i == 0:
            expected.append("out_of_range")
        reasons = item.get("reasons") or []
        if reasons and reasons[0]["feature"] == "group":
            expected.append("sensitive_feature")
        assert item["review"] == {"required": bool(expected), "rules": expected}, i
    fired_rules = {rule for item in answer["explanations"] for rule in item["review"]["rules"]}
    assert fired_rules == {"probability_band", "out_of_range", "sensitive_feature"}


def test_switched_off_rules_never_fire_and_quality_routes() -> None:
    item = {
        "prediction": {"label": "yes", "probabilities": {"no": 0.49, "yes": 0.51}},
        "flags": {"out_of_range": ["x1"]},
        "lime": {"score": 0.2},
        "reasons": [{"feature": "group"}],
    }
    on = ReviewRules.from_dict({"sensitive_features": ["group"]})
    assert fired(on, item) == ["probability_band", "out_of_range", "low_quality", "sensitive_feature"]
    off = ReviewRules.from_dict(
        {"probability_band": None, "out_of_range": False, "low_quality": False, "sensitive_in_top": 0}
    )
    assert fired(off, item, ("group",)) == []
    # The manifest's own sensitive field (``{feature: bin_edges or None}``) counts too.
    assert fired(
        ReviewRules(), item, manifest_sensitive(type("M", (), {"sensitive": {"group": None}})())
    ) == [
        "probability_band",
        "out_of_range",
        "low_quality",
        "sensitive_feature",
    ]
