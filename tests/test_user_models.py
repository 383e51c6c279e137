"""Models a user brings: labels by name, missing values, native categoricals, background checks.

Every model here is trained in the test, registered into ``tmp_path`` and served over HTTP; the
answers are compared with the model's own ``predict``/``predict_proba`` by class *name*, and SHAP's
local accuracy is checked on rows with missing values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explain_service.app import create_app
from explain_service.errors import RegistrationError
from explain_service.registry import register_model
from tests._agreement import checked_both_ways
from tests.conftest import OPEN_ACCESS

N = 240


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """One native thread, as the server runs (HistGradientBoosting's OpenMP pool costs more than it saves)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _frame(n: int = N, seed: int = 0, *, nan: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "income": rng.normal(50.0, 12.0, n).round(1),
            "debt": rng.normal(20.0, 6.0, n).round(1),
            "region": rng.choice(["north", "south", "east"], n),
        }
    )
    if nan:
        X.loc[rng.random(n) < 0.2, "income"] = np.nan
    return X


def _score(X: pd.DataFrame) -> np.ndarray:
    income = X["income"].fillna(35.0).to_numpy()
    return (income - 50.0) / 12.0 - (X["debt"].to_numpy() - 20.0) / 6.0 + (X["region"] == "south") * 0.8


def _labels(X: pd.DataFrame, names: list[Any]) -> np.ndarray:
    s = _score(X) + np.random.default_rng(1).normal(0, 0.7, len(X))
    if len(names) == 2:
        return np.where(s > 0, names[1], names[0])
    return np.asarray(names, dtype=object)[np.digitize(s, [-0.8, 0.8])]


def _onehot_pipeline(final: Any, *, impute: bool = False) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    numeric: Any = SimpleImputer(strategy="median") if impute else "passthrough"
    pre = ColumnTransformer(
        [
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["region"]),
            ("num", numeric, ["income", "debt"]),
        ]
    )
    return Pipeline([("pre", pre), ("model", final)])


def _hgb() -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=30, max_depth=3, random_state=0)


def _xgb(**kw: Any) -> Any:
    import xgboost as xgb

    return xgb.XGBClassifier(n_estimators=25, max_depth=3, learning_rate=0.3, random_state=0, n_jobs=1, **kw)


def _client(models_dir: Path, tmp_path: Path) -> Any:
    app = create_app(
        {
            "models_dir": str(models_dir),
            "database_url": f"sqlite:///{tmp_path / 'audit.sqlite3'}",
            "plots_dir": str(tmp_path / "plots"),
            "TESTING": True,
            **OPEN_ACCESS,
        }
    )
    return app.test_client()


def _instances(X: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for rec in X.to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()})
    return out


def _assert_served_like_model(client: Any, name: str, model: Any, X: pd.DataFrame, display: dict) -> None:
    """Labels and probabilities over HTTP equal the model's own, by class name."""
    resp = client.post(f"/v1/models/{name}:predict", json={"instances": _instances(X)})
    assert resp.status_code == 200, resp.get_json()
    answers = resp.get_json()["predictions"]
    labels = model.predict(X)
    proba = model.predict_proba(X)
    for i, ans in enumerate(answers):
        assert ans["label"] == display[labels[i]]
        for k, raw in enumerate(model.classes_):
            assert ans["probabilities"][display[raw]] == pytest.approx(float(proba[i, k]), abs=1e-9)


# -- 1. class labels by name ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "raw", "given", "display"),
    [
        pytest.param(
            lambda: _onehot_pipeline(_hgb()),
            ["default", "repaid"],
            ["repaid", "default"],
            {"default": "default", "repaid": "repaid"},
            id="hgb-strings-shuffled",
        ),
        pytest.param(
            lambda: _onehot_pipeline(_hgb()),
            [0, 1],
            ["repaid", "default"],
            {0: "repaid", 1: "default"},
            id="hgb-integers-renamed",
        ),
        pytest.param(
            lambda: _onehot_pipeline(_hgb()),
            [False, True],
            None,
            {False: "False", True: "True"},
            id="hgb-booleans",
        ),
        pytest.param(
            lambda: _onehot_pipeline(_xgb()),
            [0, 1],
            ["bad", "good"],
            {0: "bad", 1: "good"},
            id="xgb-integers-renamed",
        ),
        pytest.param(
            lambda: _onehot_pipeline(_hgb()),
            ["low", "mid", "high"],
            ["mid", "high", "low"],
            {"low": "low", "mid": "mid", "high": "high"},
            id="hgb-multiclass-shuffled",
        ),
        pytest.param(
            lambda: _onehot_pipeline(_xgb()),
            [0, 1, 2],
            ["low", "mid", "high"],
            {0: "low", 1: "mid", 2: "high"},
            id="xgb-multiclass-renamed",
        ),
    ],
)
def test_labels_and_probabilities_match_the_model_by_name(
    tmp_path: Path, make: Any, raw: list, given: list | None, display: dict
) -> None:
    X = _frame()
    y = _labels(X, raw)
    model = make().fit(X, y)
    manifest = register_model(
        model,
        "m",
        background=X,
        class_names=given,
        favorable=display[raw[-1]],
        models_dir=tmp_path / "models",
    )
    assert list(manifest.class_names) == [display[c] for c in model.classes_]
    client = _client(tmp_path / "models", tmp_path)
    _assert_served_like_model(client, "m", model, X.iloc[:60], display)


def test_the_readme_example_answers_the_models_own_label(tmp_path: Path) -> None:
    X = _frame()
    model = _onehot_pipeline(_hgb()).fit(X, _labels(X, ["default", "repaid"]))
    register_model(
        model,
        "loan",
        background=X,
        class_names=["repaid", "default"],
        favorable="repaid",
        models_dir=tmp_path,
    )
    client = _client(tmp_path, tmp_path)
    resp = client.post(
        "/v1/models/loan:explain", json={"instances": _instances(X.iloc[:20]), "methods": ["shap"]}
    )
    assert resp.status_code == 200, resp.get_json()
    for i, exp in enumerate(resp.get_json()["explanations"]):
        assert exp["prediction"]["label"] == model.predict(X.iloc[[i]])[0]
        p_default = model.predict_proba(X.iloc[[i]])[0, list(model.classes_).index("default")]
        assert exp["prediction"]["probabilities"]["default"] == pytest.approx(p_default, abs=1e-9)


@pytest.mark.parametrize(
    ("raw", "given", "match"),
    [
        pytest.param(
            ["default", "repaid"], ["good", "bad"], r"\['good', 'bad'\].*\['default', 'repaid'\]", id="unseen"
        ),
        pytest.param(
            ["default", "repaid"], ["default"], r"\['default'\].*\['default', 'repaid'\]", id="too-few"
        ),
        pytest.param([0, 1], ["a", "b", "c"], r"\['a', 'b', 'c'\].*\['0', '1'\]", id="int-wrong-length"),
        pytest.param([3, 7], ["a", "b"], r"\['a', 'b'\].*\['3', '7'\]", id="int-not-0-to-k"),
    ],
)
def test_class_names_that_are_not_the_models_are_refused(
    tmp_path: Path, raw: list, given: list, match: str
) -> None:
    X = _frame()
    model = _onehot_pipeline(_hgb()).fit(X, _labels(X, raw))
    with pytest.raises(RegistrationError, match=match):
        register_model(model, "m", background=X, class_names=given, models_dir=tmp_path)
    assert not (tmp_path / "m").exists()


def test_booster_class_names_must_match_num_class(tmp_path: Path) -> None:
    import xgboost as xgb

    X = _frame()[["income", "debt"]]
    y = np.digitize(_score(_frame()), [-0.8, 0.8])
    booster = xgb.train(
        {"objective": "multi:softprob", "num_class": 3, "max_depth": 2}, xgb.DMatrix(X, label=y), 5
    )
    with pytest.raises(RegistrationError, match="3 classes"):
        register_model(booster, "b", background=X, class_names=["a", "b"], models_dir=tmp_path)
    manifest = register_model(booster, "b", background=X, class_names=["a", "b", "c"], models_dir=tmp_path)
    assert manifest.class_names == ("a", "b", "c")


# -- 5. background columns --------------------------------------------------------------------------


def test_an_extra_background_column_is_refused_by_name(tmp_path: Path) -> None:
    X = _frame()
    model = _onehot_pipeline(_hgb()).fit(X, _labels(X, [0, 1]))
    bg = X.assign(applicant_id=np.arange(len(X)))
    with pytest.raises(RegistrationError, match="applicant_id"):
        register_model(model, "m", background=bg, models_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_background_column_is_refused_by_name(tmp_path: Path) -> None:
    X = _frame()
    model = _onehot_pipeline(_hgb()).fit(X, _labels(X, [0, 1]))
    with pytest.raises(RegistrationError, match="region"):
        register_model(model, "m", background=X.drop(columns="region"), models_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_background_columns_are_put_in_the_models_order(tmp_path: Path) -> None:
    X = _frame()
    model = _onehot_pipeline(_hgb()).fit(X, _labels(X, [0, 1]))
    manifest = register_model(model, "m", background=X[["region", "debt", "income"]], models_dir=tmp_path)
    assert manifest.schema.names == ["income", "debt", "region"]


def test_a_model_fitted_on_numpy_checks_the_column_count(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    X = _frame()[["income", "debt"]]
    model = LogisticRegression().fit(X.to_numpy(), _labels(_frame(), [0, 1]))
    with pytest.raises(RegistrationError, match=r"3 columns.*2 features"):
        register_model(model, "m", background=X.assign(extra=1.0), models_dir=tmp_path)


# -- 3. XGBoost native categoricals -----------------------------------------------------------------


def _categorical_frame(n: int = N, *, nan: bool = False) -> pd.DataFrame:
    X = _frame(n, nan=nan)
    # A category order that is not alphabetical: codes must follow the dtype, not sorting.
    X["region"] = pd.Categorical(X["region"], categories=["south", "north", "east"])
    return X


def _shap_residuals_ok(explanations: list[dict]) -> None:
    for exp in explanations:
        shap = exp["shap"]
        output = shap["base_value"] + sum(shap["values"].values()) + shap["additivity_residual"]
        assert abs(shap["additivity_residual"]) <= 1e-5 * max(1.0, abs(output))


def test_xgboost_native_categoricals_register_predict_and_explain_exactly(tmp_path: Path) -> None:
    import xgboost as xgb

    X = _categorical_frame(nan=True)
    model = _xgb(enable_categorical=True, tree_method="hist").fit(X, _labels(X, [0, 1]))
    manifest = register_model(model, "cat", background=X, class_names=["no", "yes"], models_dir=tmp_path)
    region = manifest.schema["region"]
    assert region.kind == "categorical" and region.categories == ("south", "north", "east")
    assert manifest.schema["income"].missing
    client = _client(tmp_path, tmp_path)
    rows = X.iloc[:40]
    _assert_served_like_model(client, "cat", model, rows, {0: "no", 1: "yes"})
    resp = client.post(
        "/v1/models/cat:explain", json={"instances": _instances(rows), "methods": ["shap"], "target": "yes"}
    )
    assert resp.status_code == 200, resp.get_json()
    explanations = resp.get_json()["explanations"]
    contribs = model.get_booster().predict(xgb.DMatrix(rows, enable_categorical=True), pred_contribs=True)
    for i, exp in enumerate(explanations):
        got = [exp["shap"]["values"][n] for n in ["income", "debt", "region"]]
        np.testing.assert_allclose(got, contribs[i, :-1], rtol=0, atol=1e-6)
        assert exp["shap"]["base_value"] == pytest.approx(float(contribs[i, -1]), abs=1e-6)
    _shap_residuals_ok(explanations)
    assert rows["income"].isna().any()


def test_a_booster_with_native_categoricals_registers(tmp_path: Path) -> None:
    import xgboost as xgb

    X = _categorical_frame()
    y = (_score(X) > 0).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
        xgb.DMatrix(X, label=y, enable_categorical=True),
        10,
    )
    register_model(booster, "bcat", background=X, class_names=["no", "yes"], models_dir=tmp_path)
    client = _client(tmp_path, tmp_path)
    resp = client.post("/v1/models/bcat:predict", json={"instances": _instances(X.iloc[:30])})
    expected = booster.predict(xgb.DMatrix(X.iloc[:30], enable_categorical=True))
    got = [p["probabilities"]["yes"] for p in resp.get_json()["predictions"]]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)


def test_probability_space_shap_is_refused_for_native_categoricals(tmp_path: Path) -> None:
    X = _categorical_frame()
    model = _xgb(enable_categorical=True, tree_method="hist").fit(X, _labels(X, [0, 1]))
    register_model(model, "cat", background=X, models_dir=tmp_path)
    client = _client(tmp_path, tmp_path)
    body = {
        "instances": _instances(X.iloc[:1]),
        "methods": ["shap"],
        "options": {"shap": {"output": "probability"}},
    }
    resp = client.post("/v1/models/cat:explain", json=body)
    assert resp.status_code == 422
    assert "log_odds" in resp.get_json()["errors"]["options.shap.output"][0]


def test_a_failed_registration_leaves_nothing_on_disk(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    X = _frame()
    model = _onehot_pipeline(LogisticRegression()).fit(X, _labels(X, [0, 1]))
    # The round-trip check fails only once the version is written: a model that cannot take NaN.
    with pytest.raises(RegistrationError, match=r"missing values in \['income'\].*SimpleImputer"):
        register_model(model, "lr", background=X, allow_missing=["income"], models_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


# -- 2. missing values ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Models that take missing values in ``income`` (and one that does not), registered once."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    root = tmp_path_factory.mktemp("nan-models")
    X = _frame(nan=True)
    clean = _frame()
    with threadpool_limits(1):
        models = {
            "hgb-nan": (_onehot_pipeline(_hgb()).fit(X, _labels(X, [0, 1])), X, ()),
            "xgb-nan": (_onehot_pipeline(_xgb()).fit(X, _labels(X, [0, 1])), X, ()),
            "impute": (
                _onehot_pipeline(LogisticRegression(), impute=True).fit(X, _labels(X, [0, 1])),
                clean,
                ("income",),
            ),
            "strict": (_onehot_pipeline(LogisticRegression()).fit(clean, _labels(clean, [0, 1])), clean, ()),
        }
        for name, (model, background, allow) in models.items():
            register_model(
                model,
                name,
                background=background,
                class_names=["declined", "approved"],
                favorable="approved",
                allow_missing=allow,
                models_dir=root,
            )
    from explain_service.registry.store import ModelRegistry

    return {
        "root": root,
        "models": {k: v[0] for k, v in models.items()},
        "X": X,
        "registry": ModelRegistry(root),
    }


@pytest.fixture
def nan_client(nan_models: dict[str, Any], tmp_path: Path) -> Any:
    return _client(nan_models["root"], tmp_path)


def test_the_schema_says_which_features_take_missing_values(nan_client: Any) -> None:
    for name, expected in [("hgb-nan", True), ("impute", True), ("strict", False)]:
        features = {f["name"]: f for f in nan_client.get(f"/v1/models/{name}").get_json()["features"]}
        assert features["income"].get("missing", False) is expected
        assert "missing" not in features["debt"]


@pytest.mark.parametrize("name", ["hgb-nan", "xgb-nan", "impute"])
def test_null_and_absent_values_are_explained_exactly(
    nan_client: Any, nan_models: dict[str, Any], name: str
) -> None:
    model = nan_models["models"][name]
    X = nan_models["X"]
    rows = X[X["income"].isna()].iloc[:6]
    instances = _instances(rows)
    for inst in instances[::2]:
        del inst["income"]  # an absent key means missing too
    _assert_served_like_model(nan_client, name, model, rows, {0: "declined", 1: "approved"})
    body = {"instances": instances, "methods": ["shap", "lime", "counterfactual"], "target": "approved"}
    resp = nan_client.post(f"/v1/models/{name}:explain", json=body)
    assert resp.status_code == 200, resp.get_json()
    explanations = resp.get_json()["explanations"]
    _shap_residuals_ok(explanations)
    for exp in explanations:
        assert all(math.isfinite(v) for v in exp["lime"]["contributions"].values())
        for cf in exp["counterfactual"]["counterfactuals"]:
            # A missing value is kept as it is: never filled in, never blanked.
            assert "income" not in cf["changes"] and cf["instance"]["income"] is None


def test_xgboost_shap_with_missing_values_equals_pred_contribs(
    nan_client: Any, nan_models: dict[str, Any]
) -> None:
    import xgboost as xgb

    pipe = nan_models["models"]["xgb-nan"]
    rows = nan_models["X"].iloc[:30]
    resp = nan_client.post(
        "/v1/models/xgb-nan:explain", json={"instances": _instances(rows), "target": "approved"}
    )
    assert resp.status_code == 200, resp.get_json()
    Xt = pipe[:-1].transform(rows)
    contribs = pipe[-1].get_booster().predict(xgb.DMatrix(Xt), pred_contribs=True)
    region = contribs[:, :3].sum(axis=1)  # one-hot columns come first
    for i, exp in enumerate(resp.get_json()["explanations"]):
        values = exp["shap"]["values"]
        assert values["region"] == pytest.approx(float(region[i]), abs=1e-6)
        assert values["income"] == pytest.approx(float(contribs[i, 3]), abs=1e-6)
        assert values["debt"] == pytest.approx(float(contribs[i, 4]), abs=1e-6)


def test_a_model_without_missing_values_refuses_null_by_name(nan_client: Any) -> None:
    row = _instances(_frame().iloc[:1])[0]
    resp = nan_client.post("/v1/models/strict:explain", json={"instances": [{**row, "income": None}]})
    assert resp.status_code == 422
    assert resp.get_json()["errors"] == {"instances.0.income": ["Field may not be null."]}
    del row["income"]
    resp = nan_client.post("/v1/models/strict:explain", json={"instances": [row]})
    assert resp.get_json()["errors"] == {"instances.0.income": ["Missing data for required field."]}


def test_a_background_with_missing_values_needs_a_model_that_takes_them(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    clean = _frame()
    model = _onehot_pipeline(LogisticRegression()).fit(clean, _labels(clean, [0, 1]))
    with pytest.raises(RegistrationError, match=r"cannot predict.*Input X contains NaN.*SimpleImputer"):
        register_model(model, "lr", background=_frame(nan=True), models_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


missing_values = st.one_of(
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.text(max_size=4),
    st.sampled_from(["north", "south", "west"]),
    st.booleans(),
)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    changes=st.dictionaries(
        st.sampled_from(["income", "debt", "region", "other"]), missing_values, max_size=3
    ),
    drop=st.sets(st.sampled_from(["income", "debt", "region"]), max_size=2),
)
def test_fast_validation_agrees_with_the_schema_on_missing_values(
    nan_models: dict[str, Any], changes: dict, drop: set
) -> None:
    model = nan_models["registry"].get("hgb-nan")
    row = {"income": 50.0, "debt": 20.0, "region": "north", **changes}
    for key in drop:
        row.pop(key, None)
    slow = checked_both_ways(model, row)
    if slow is not None and ("income" not in row or row["income"] is None):
        assert slow["income"] is None


# -- batch: missing cells, one target per job, LIME columns that agree with SHAP ----------------------


def _batch(models: Path, *args: str) -> None:
    from click.testing import CliRunner

    from explain_service.batch.command import batch

    result = CliRunner().invoke(batch, ["--models-dir", str(models), "--progress-every", "0", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output


def test_batch_takes_empty_cells_and_explains_one_target_for_the_whole_job(
    nan_models: dict[str, Any], tmp_path: Path
) -> None:
    X = nan_models["X"]
    X.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.parquet"
    _batch(
        nan_models["root"], "--model", "xgb-nan", "--input", str(tmp_path / "in.csv"), "--output", str(out)
    )
    rejected = tmp_path / "out.rejected.jsonl"
    assert not rejected.exists() or rejected.read_bytes() == b""
    frame = pd.read_parquet(out)
    assert frame["income"].isna().tolist() == X["income"].isna().tolist()
    model = nan_models["models"]["xgb-nan"]
    np.testing.assert_allclose(frame["proba.approved"], model.predict_proba(X)[:, 1], rtol=0, atol=1e-7)
    # The favourable class for every row, whatever each row's prediction: one scale for the columns.
    assert set(frame["shap.target"]) == {"approved"} and set(frame["prediction"]) == {"approved", "declined"}
    assert frame["shap.base_value"].nunique() == 1
    assert (frame["shap.additivity_residual"].abs() <= 1e-5).all()

    _batch(
        nan_models["root"], "--model", "xgb-nan", "--input", str(tmp_path / "in.csv"),
        "--output", str(tmp_path / "per-row.parquet"), "--target", "predicted",
    )  # fmt: skip
    per_row = pd.read_parquet(tmp_path / "per-row.parquet")
    assert per_row["shap.target"].tolist() == per_row["prediction"].tolist()


def test_batch_lime_columns_are_contributions_that_agree_with_shap(
    nan_models: dict[str, Any], tmp_path: Path
) -> None:
    X = _frame(300, seed=7)
    X.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.parquet"
    _batch(
        nan_models["root"], "--model", "xgb-nan", "--input", str(tmp_path / "in.csv"), "--output", str(out),
        "--methods", "shap,lime", "--options", '{"lime": {"num_samples": 512}}',
    )  # fmt: skip
    frame = pd.read_parquet(out)
    assert {"lime.slope.income", "lime.slope.debt", "lime.slope.region"} <= set(frame.columns)
    for name in ["income", "debt", "region"]:
        r = np.corrcoef(frame[f"shap.{name}"], frame[f"lime.{name}"])[0, 1]
        assert r > 0.5, (name, r)


# -- 8. counterfactuals a person can act on -----------------------------------------------------------


def test_demo_counterfactuals_respect_the_shipped_constraints(client: Any, registry: Any) -> None:
    german = registry.get("german-credit")
    rows = german.background[german.background["saving_accounts"] != "not_known"].head(12)
    instances = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows.to_dict("records")
    ]
    body = {
        "instances": instances,
        "methods": ["counterfactual"],
        "options": {"counterfactual": {"count": 4}},
    }
    resp = client.post("/v1/models/german-credit:explain", json=body)
    assert resp.status_code == 200, resp.get_json()
    found = 0
    for exp in resp.get_json()["explanations"]:
        for cf in exp["counterfactual"]["counterfactuals"]:
            found += 1
            changes = cf["changes"]
            assert "sex" not in changes and "job" not in changes
            assert changes.get("age", {"from": 0, "to": 0})["to"] >= changes.get("age", {"from": 0})["from"]
            assert changes.get("saving_accounts", {}).get("to") != "not_known"
            assert changes.get("checking_account", {}).get("to") != "not_known"
    assert found > 0

    diabetes = registry.get("diabetes-gbr")
    rows = [{k: float(v) for k, v in r.items()} for r in diabetes.background.head(4).to_dict("records")]
    body = {
        "instances": rows,
        "methods": ["counterfactual"],
        "options": {"counterfactual": {"desired_range": [0, 100], "count": 3}},
    }
    resp = client.post("/v1/models/diabetes-gbr:explain", json=body)
    assert resp.status_code == 200, resp.get_json()
    for exp in resp.get_json()["explanations"]:
        for cf in exp["counterfactual"]["counterfactuals"]:
            assert "sex" not in cf["changes"]


def test_a_request_can_forbid_categories(client: Any, german_row: dict) -> None:
    forbid = ["moderate", "rich", "quite rich"]
    body = {
        "instances": [german_row],
        "methods": ["counterfactual"],
        "options": {"counterfactual": {"constraints": {"saving_accounts": {"forbidden": forbid}}}},
    }
    resp = client.post("/v1/models/german-credit:explain", json=body)
    assert resp.status_code == 200, resp.get_json()
    for cf in resp.get_json()["explanations"][0]["counterfactual"]["counterfactuals"]:
        assert cf["instance"]["saving_accounts"] not in forbid
    body["options"]["counterfactual"]["constraints"] = {"age": {"forbidden": ["22"]}}
    resp = client.post("/v1/models/german-credit:explain", json=body)
    assert resp.status_code == 422
    assert "options.counterfactual.constraints.age.forbidden" in resp.get_json()["errors"]
    body["options"]["counterfactual"]["constraints"] = {"housing": {"forbidden": ["castle"]}}
    resp = client.post("/v1/models/german-credit:explain", json=body)
    assert resp.status_code == 422
    assert "castle" in resp.get_json()["errors"]["options.counterfactual.constraints.housing.forbidden"][0]


# -- 7. values outside what the model saw ------------------------------------------------------------


def test_out_of_range_values_are_flagged_and_refused_when_strict(client: Any, german_row: dict) -> None:
    row = {**german_row, "age": 150}
    resp = client.post("/v1/models/german-credit:explain", json={"instances": [row, german_row]})
    assert resp.status_code == 200, resp.get_json()
    first, second = resp.get_json()["explanations"]
    assert first["flags"] == {"out_of_range": ["age"]} and second["flags"] == {}
    body = {"instances": [row], "options": {"strict_ranges": True}}
    resp = client.post("/v1/models/german-credit:explain", json=body)
    assert resp.status_code == 422
    assert list(resp.get_json()["errors"]) == ["instances.0.age"]
    resp = client.post("/v1/models/german-credit:explain", json={**body, "options": {"strict_ranges": "yes"}})
    assert resp.status_code == 422 and "options.strict_ranges" in resp.get_json()["errors"]


def test_batch_writes_a_flags_column(nan_models: dict[str, Any], tmp_path: Path) -> None:
    X = _frame(5).assign(debt=[20.0, -100.0, 20.0, 500.0, 20.0])
    X.loc[0, "income"] = np.nan
    X.to_csv(tmp_path / "in.csv", index=False)
    _batch(
        nan_models["root"],
        "--model",
        "hgb-nan",
        "--input",
        str(tmp_path / "in.csv"),
        "--output",
        str(tmp_path / "o.parquet"),
    )
    flags = [json.loads(f) for f in pd.read_parquet(tmp_path / "o.parquet")["flags"]]
    assert flags == [{"missing": ["income"]}, {"out_of_range": ["debt"]}, {}, {"out_of_range": ["debt"]}, {}]
