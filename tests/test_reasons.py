"""Plain-language reasons: which features, in what order, and sentences a reader can take as written."""

from __future__ import annotations

import math

import pytest

from explain_service.explainers.reasons import reasons
from explain_service.registry.schema import Feature

FEATURES = (
    Feature("checking_account", "categorical", categories=("little", "moderate", "rich")),
    Feature("duration", "integer", min=4, max=72),
    Feature("bmi", "numeric", min=-0.1, max=0.2),
    Feature("foreign_worker", "boolean"),
    Feature("credit_amount", "numeric", min=250.0, max=18424.0, description="Amount of the credit (DM)"),
)
INSTANCE = {
    "checking_account": "little",
    "duration": 48,
    "bmi": 0.0617,
    "foreign_worker": True,
    "credit_amount": math.nan,
}


def texts(attributions: dict[str, float], **kwargs) -> dict[str, str]:
    found = reasons(attributions, INSTANCE, FEATURES, **kwargs)
    return {r["feature"]: r["text"] for r in found}


@pytest.mark.parametrize(
    ("feature", "sentence"),
    [
        ("checking_account", "checking_account: little raised the risk of 'bad'"),
        ("duration", "duration of 48 raised the risk of 'bad'"),
        ("bmi", "bmi of 0.0617 raised the risk of 'bad'"),
        ("foreign_worker", "foreign_worker: yes raised the risk of 'bad'"),
        ("credit_amount", "Amount of the credit (DM): missing raised the risk of 'bad'"),
    ],
    ids=["categorical", "integer", "numeric", "boolean", "missing-with-description"],
)
def test_sentence_per_kind(feature: str, sentence: str) -> None:
    found = texts({feature: 0.5}, target="bad", favorable="good", class_names=("bad", "good"))
    assert found == {feature: sentence}


def test_names_keep_their_registered_case_for_a_regressor() -> None:
    found = texts({"bmi": 2.0, "checking_account": -1.0}, target=None, favorable=None, class_names=())
    assert found == {
        "bmi": "bmi of 0.0617 raised the prediction",
        "checking_account": "checking_account: little lowered the prediction",
    }


def test_only_adverse_features_strongest_first_with_unchanged_fields() -> None:
    found = reasons(
        {"checking_account": -0.3, "duration": -0.9, "bmi": 0.4},
        INSTANCE,
        FEATURES,
        target="good",
        favorable="good",
        class_names=("bad", "good"),
    )
    assert [r["feature"] for r in found] == ["duration", "checking_account"]
    assert found[1] == {
        "feature": "checking_account",
        "value": "little",
        "contribution": pytest.approx(0.3),
        "text": "checking_account: little lowered the likelihood of 'good'",
    }
