"""The ``lime`` method: determinism, faithfulness to the model, and option validation."""

from __future__ import annotations

import re

import numpy as np
import pytest
from marshmallow import ValidationError

from explain_service.explainers._tabular import background_stats, row_dicts
from explain_service.explainers.base import canonical_json, derive_seed
from explain_service.explainers.lime import LimeExplainer, LimeOptions, neighbourhood
from tests._german_fixture import (
    PipelineModel,
    diabetes_model,
    german_model,
    iris_model,
    mixed_model,
    query_rows,
)

MODELS = {"german": german_model, "diabetes": diabetes_model, "iris": iris_model, "mixed": mixed_model}


@pytest.fixture(scope="session")
def explainer() -> LimeExplainer:
    return LimeExplainer()


def options(**overrides: object) -> dict:
    return LimeOptions().load(overrides)


@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
def test_repeat_is_byte_identical(explainer: LimeExplainer, kind: str) -> None:
    model = MODELS[kind]()
    rows = query_rows(model, 3)
    first = explainer.explain(model, rows, None, options())
    again = LimeExplainer().explain(model, rows.copy(), None, options())
    assert canonical_json(first) == canonical_json(again)


def test_rows_explained_together_or_alone_agree(explainer: LimeExplainer) -> None:
    model = german_model()
    rows = query_rows(model, 4)
    together = explainer.explain(model, rows, None, options(stability=2))
    alone = [explainer.explain(model, rows.iloc[[i]], None, options(stability=2))[0] for i in range(4)]
    assert canonical_json(together) == canonical_json(alone)


def test_seed_is_derived_from_the_request_when_not_given(explainer: LimeExplainer) -> None:
    model = german_model()
    rows = query_rows(model, 2)
    loaded = options()
    results = explainer.explain(model, rows, None, loaded)
    rest = {k: v for k, v in loaded.items() if k != "seed"}
    for row, result in zip(row_dicts(rows, model.schema.features), results, strict=True):
        assert result["seed"] == derive_seed(model.sha256, row, "lime", rest)
    assert results[0]["seed"] != results[1]["seed"]


def test_explicit_seed_is_used_and_reported(explainer: LimeExplainer) -> None:
    model = german_model()
    result = explainer.explain(model, query_rows(model, 1), None, options(seed=7))[0]
    assert result["seed"] == 7


def test_different_seeds_draw_different_neighbourhoods(explainer: LimeExplainer) -> None:
    model = german_model()
    rows = query_rows(model, 1)
    row = row_dicts(rows, model.schema.features)[0]
    stats = background_stats(model)
    cols_a, z_a = neighbourhood(stats, row, 256, 1, 0.5, 0.5)
    cols_b, z_b = neighbourhood(stats, row, 256, 2, 0.5, 0.5)
    assert not np.array_equal(z_a, z_b)
    assert not np.array_equal(cols_a["credit_amount"], cols_b["credit_amount"])
    a = explainer.explain(model, rows, None, options(seed=1))[0]
    b = explainer.explain(model, rows, None, options(seed=2))[0]
    assert a["weights"] != b["weights"]


def test_neighbourhood_stays_inside_the_schema() -> None:
    model = german_model()
    row = row_dicts(query_rows(model, 1), model.schema.features)[0]
    columns, z = neighbourhood(background_stats(model), row, 512, 3, 1.0, 0.5)
    for feature in model.schema.features:
        values = columns[feature.name]
        if feature.kind == "categorical":
            assert set(values) <= set(feature.categories or ())
            kept = z[:, model.schema.names.index(feature.name)] == 1.0
            assert np.all(values[kept] == row[feature.name])
            assert np.all(values[~kept] != row[feature.name])
        else:
            assert np.all(values == np.rint(values)), feature.name  # every German numeric is an integer
            assert values.min() >= feature.min and values.max() <= feature.max


def test_output_shape_and_plain_types(explainer: LimeExplainer) -> None:
    model = german_model()
    result = explainer.explain(model, query_rows(model, 1), None, options())[0]
    assert set(result) == {
        "target",
        "intercept",
        "weights",
        "contributions",
        "score",
        "prediction_local",
        "seed",
        "num_samples",
    }
    assert list(result["weights"]) == model.schema.names == list(result["contributions"])
    assert all(type(w) is float for w in result["weights"].values())
    assert type(result["intercept"]) is float and type(result["score"]) is float
    assert type(result["seed"]) is int and result["num_samples"] == 2048


def test_default_target_is_the_predicted_class(explainer: LimeExplainer) -> None:
    model = german_model()
    rows = query_rows(model, 6)
    predicted = model.predict_proba(rows).argmax(axis=1)
    results = explainer.explain(model, rows, None, options())
    assert [r["target"] for r in results] == [model.class_names[k] for k in predicted]


@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
def test_local_r2_is_reported_and_at_most_one(explainer: LimeExplainer, kind: str) -> None:
    model = MODELS[kind]()
    for result in explainer.explain(model, query_rows(model, 3), None, options()):
        assert np.isfinite(result["score"]) and result["score"] <= 1.0


def _approval_weights(explainer: LimeExplainer, model: PipelineModel, region: str, defaulted: bool) -> dict:
    rows = model.schema.coerce(
        model.background.head(1).assign(income=50.0, years=15, region=region, defaulted=defaulted)
    )
    approved = np.array([model.class_names.index("approved")])
    return explainer.explain(model, rows, approved, options())[0]["weights"]


def test_weights_follow_a_model_with_known_signs(explainer: LimeExplainer) -> None:
    """The synthetic approval model raises approval with income and years, lowers it after a default,
    favours the north over the south; LIME's weights for "approved" must agree."""
    model = mixed_model()
    coef = dict(zip(model.estimator[0].get_feature_names_out(), model.estimator[-1].coef_[0], strict=True))
    assert coef["num__income"] > 0 and coef["num__years"] > 0 and coef["num__defaulted"] < 0

    north_clean = _approval_weights(explainer, model, "north", False)
    assert north_clean["income"] > 0 and north_clean["years"] > 0
    assert north_clean["defaulted"] > 0  # keeping "no default" helps
    assert north_clean["region"] > 0  # being in the north helps

    south_defaulted = _approval_weights(explainer, model, "south", True)
    assert south_defaulted["defaulted"] < 0  # keeping the default hurts
    assert south_defaulted["region"] < 0  # being in the south hurts


def test_contributions_judge_the_instance_not_the_slope(explainer: LimeExplainer) -> None:
    """A low income has a positive slope for approval but counts against this applicant."""
    model = mixed_model()
    rows = model.schema.coerce(model.background.head(1).assign(income=25.0, years=15, region="east"))
    result = explainer.explain(model, rows, np.array([1]), options())[0]
    assert result["weights"]["income"] > 0 > result["contributions"]["income"]


def test_contributions_sum_to_the_surrogate_at_the_instance_minus_its_background_mean(
    explainer: LimeExplainer,
) -> None:
    model = german_model()
    rows = query_rows(model, 1)
    result = explainer.explain(model, rows, None, options())[0]
    row = row_dicts(rows, model.schema.features)[0]
    surrogate = np.full(len(model.background), result["intercept"])
    for st in background_stats(model):
        column = model.background[st.name]
        if st.feature.is_numeric:
            z = (column.to_numpy(dtype=float) - row[st.name]) / st.scale
        else:
            z = (column.to_numpy() == row[st.name]).astype(float)
        surrogate += result["weights"][st.name] * z
    expected = result["prediction_local"] - surrogate.mean()
    assert sum(result["contributions"].values()) == pytest.approx(expected, abs=1e-9)


def test_multiclass_explains_the_requested_class(explainer: LimeExplainer) -> None:
    model = iris_model()
    rows = query_rows(model, 1)
    proba = model.predict_proba(rows)[0]
    results = [explainer.explain(model, rows, np.array([k]), options())[0] for k in range(3)]
    assert [r["target"] for r in results] == list(model.class_names)
    for k, result in enumerate(results):
        assert abs(result["prediction_local"] - proba[k]) < 0.25
    assert results[0]["weights"] != results[1]["weights"]


def test_regression_has_no_target_and_tracks_the_value(explainer: LimeExplainer) -> None:
    model = diabetes_model()
    rows = query_rows(model, 3)
    values = model.predict_value(rows)
    spread = float(np.ptp(model.predict_value(model.background)))
    for result, value in zip(explainer.explain(model, rows, None, options()), values, strict=True):
        assert result["target"] is None
        assert abs(result["prediction_local"] - value) < 0.25 * spread
        assert result["score"] > 0.3


def test_stability_reports_top5_agreement_over_seeds(explainer: LimeExplainer) -> None:
    model = german_model()
    rows = query_rows(model, 2)
    plain = explainer.explain(model, rows, None, options(seed=11))
    checked = explainer.explain(model, rows, None, options(seed=11, stability=5))
    for a, b in zip(plain, checked, strict=True):
        assert "stability" not in a
        assert b["stability"]["seeds"] == 5 and b["stability"]["top_k"] == 5
        assert 0.8 <= b["stability"]["top_k_jaccard"] <= 1.0
        assert a["weights"] == b["weights"]  # the first seed is the reported explanation


def test_kernel_width_changes_the_fit(explainer: LimeExplainer) -> None:
    model = german_model()
    rows = query_rows(model, 1)
    uniform = explainer.explain(model, rows, None, options(seed=3))[0]
    kernel = explainer.explain(model, rows, None, options(seed=3, kernel_width=1.0))[0]
    assert uniform["weights"] != kernel["weights"] and kernel["score"] <= 1.0


def test_options_have_defaults() -> None:
    assert LimeOptions().load({}) == {
        "num_samples": 2048,
        "width": 0.5,
        "change_probability": 0.5,
        "kernel_width": None,
        "stability": 0,
        "seed": None,
    }


@pytest.mark.parametrize(
    ("given", "field", "match"),
    [
        ({"num_samples": 20_001}, "num_samples", "num_samples must be between 100 and 20000"),
        ({"num_samples": 10}, "num_samples", "num_samples must be between"),
        ({"num_samples": 1.5}, "num_samples", "integer"),
        ({"width": 0}, "width", "width must be between"),
        ({"stability": 1}, "stability", "0 \\(off\\) or between 2 and 10"),
        ({"stability": 11}, "stability", "stability must be between"),
        ({"seed": -1}, "seed", "seed must be between"),
        ({"kernel_width": -1.0}, "kernel_width", "kernel_width must be between"),
        ({"num_features": 3}, "num_features", "Unknown field"),
    ],
    ids=[
        "over-cap",
        "under-floor",
        "not-integer",
        "width",
        "one-seed",
        "many-seeds",
        "seed",
        "kernel",
        "unknown",
    ],
)
def test_bad_options_name_the_field(given: dict, field: str, match: str) -> None:
    with pytest.raises(ValidationError) as info:
        LimeOptions().load(given)
    messages = info.value.messages_dict
    assert list(messages) == [field]
    assert any(re.search(match, m) for m in messages[field])


def test_supports_classifiers_and_regressors(explainer: LimeExplainer) -> None:
    assert explainer.supports(german_model()) and explainer.supports(diabetes_model())
