"""The registry stores models without pickle and refuses anything it cannot verify."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
import skops.io as sio

from explain_service.errors import ArtifactRefused, IntegrityError, ModelNotFound, RegistrationError
from explain_service.registry import ModelRegistry, load_version_dir, register_model
from explain_service.registry.demo import DEMO_MODELS
from explain_service.registry.store import list_versions


def _tiny(n: int = 60, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "income": rng.normal(50, 10, n),
            "children": rng.integers(0, 4, n),
            "region": rng.choice(["north", "south", "east"], n),
            "owner": rng.random(n) > 0.5,
        }
    )
    y = ((X.income > 50) ^ (X.region == "south")).astype(int).to_numpy()
    return X, y


def _pipeline(final):
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    pre = ColumnTransformer(
        [("cat", OneHotEncoder(sparse_output=False), ["region"])], remainder="passthrough"
    )
    return Pipeline([("pre", pre), ("model", final)])


def _double(x):
    return x * 2


class Boom:
    """Unpickling this object writes a marker file: proof that a pickle was executed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))


def test_every_demo_model_is_registered_with_a_readable_manifest(demo_models_dir: Path) -> None:
    for name in DEMO_MODELS:
        (version,) = list_versions(demo_models_dir, name)
        manifest = orjson.loads((demo_models_dir / name / version / "manifest.json").read_bytes())
        assert manifest["name"] == name
        assert set(manifest["files"]) >= {"background.csv", manifest["estimator"]["file"]}
        assert manifest["libraries"]["scikit-learn"]
        assert all(
            f["kind"] in ("numeric", "integer", "categorical", "boolean") for f in manifest["features"]
        )


def test_german_credit_schema_constraints_and_sensitive_attributes(registry: ModelRegistry) -> None:
    model = registry.get("german-credit")
    kinds = {f.name: f.kind for f in model.schema.features}
    assert kinds["sex"] == "categorical" and kinds["age"] == "integer" and kinds["credit_amount"] == "integer"
    assert model.schema["housing"].categories == ("free", "own", "rent")
    assert not model.schema.constraint("sex").mutable
    assert model.schema.constraint("age").direction == "increase"
    assert model.favorable == "good" and model.class_names == ("bad", "good")
    assert model.family == "tree" and model.transform_path == "compiled"


@pytest.mark.parametrize("final_name", ["xgboost", "logistic", "forest", "svc"])
def test_pipeline_round_trip_reproduces_predictions(tmp_path: Path, final_name: str) -> None:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC
    from xgboost import XGBClassifier

    finals = {
        "xgboost": XGBClassifier(n_estimators=10, max_depth=2, random_state=0),
        "logistic": LogisticRegression(max_iter=500),
        "forest": RandomForestClassifier(n_estimators=5, random_state=0),
        "svc": SVC(probability=True, random_state=0),  # still supported in the pinned release
    }
    X, y = _tiny()
    model = _pipeline(finals[final_name]).fit(X, y)
    manifest = register_model(model, "tiny", background=X, models_dir=tmp_path, favorable="1")
    assert manifest.version == "1"
    loaded = load_version_dir(tmp_path / "tiny" / "1")
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert {f.name: f.kind for f in loaded.schema.features} == {
        "income": "numeric",
        "children": "integer",
        "region": "categorical",
        "owner": "boolean",
    }
    second = register_model(model, "tiny", background=X, models_dir=tmp_path)
    assert second.version == "2"
    assert ModelRegistry(tmp_path).default_version("tiny") == "2"


def test_raw_booster_and_regressor(tmp_path: Path) -> None:
    import xgboost as xgb

    X, y = _tiny()
    Xn = X[["income", "children"]].astype(float)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(Xn, label=y), 5)
    register_model(booster, "booster", "1", background=Xn, class_names=["no", "yes"], models_dir=tmp_path)
    loaded = load_version_dir(tmp_path / "booster" / "1")
    np.testing.assert_allclose(loaded.predict_proba(Xn)[:, 1], booster.predict(xgb.DMatrix(Xn)))
    assert loaded.class_names == ("no", "yes")

    reg = xgb.XGBRegressor(n_estimators=5).fit(Xn, X.income * 2)
    register_model(reg, "reg", "1", background=Xn, models_dir=tmp_path)
    loaded = load_version_dir(tmp_path / "reg" / "1")
    assert loaded.task == "regression"
    np.testing.assert_array_equal(loaded.predict_value(Xn), reg.predict(Xn))


def test_tampered_artifact_is_refused_before_deserializing(models_dir: Path, monkeypatch) -> None:
    path = models_dir / "german-credit-linear" / "1" / "estimator.skops"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    calls = []
    monkeypatch.setattr(sio, "loads", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(sio, "get_untrusted_types", lambda *a, **k: calls.append(a))
    with pytest.raises(IntegrityError, match="does not match manifest"):
        load_version_dir(path.parent)
    assert calls == []


def test_tampered_background_is_refused(models_dir: Path) -> None:
    path = models_dir / "german-credit" / "1" / "background.csv"
    path.write_text(path.read_text().replace("female", "male", 1))
    with pytest.raises(IntegrityError, match=r"background\.csv"):
        load_version_dir(path.parent)


def test_pickled_artifact_is_refused_without_unpickling(models_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    version_dir = models_dir / "german-credit-linear" / "1"
    payload = pickle.dumps(Boom(str(marker)))
    # Swap the artifact for a pickle and make the manifest vouch for it: the hash passes,
    # the content must still be refused.
    (version_dir / "estimator.skops").write_bytes(payload)
    manifest = orjson.loads((version_dir / "manifest.json").read_bytes())
    import hashlib

    manifest["files"]["estimator.skops"] = hashlib.sha256(payload).hexdigest()
    (version_dir / "manifest.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(ArtifactRefused, match="pickle"):
        load_version_dir(version_dir)
    assert not marker.exists()


def test_pickle_files_in_a_version_directory_are_refused(models_dir: Path) -> None:
    version_dir = models_dir / "german-credit" / "1"
    (version_dir / "model.joblib").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ArtifactRefused, match="pickle-family"):
        load_version_dir(version_dir)


def test_untrusted_skops_type_is_refused_at_registration(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = _tiny()
    Xn = X[["income", "children"]]
    model = Pipeline([("f", FunctionTransformer(_double)), ("m", LogisticRegression())]).fit(Xn, y)
    with pytest.raises(RegistrationError, match="cannot be loaded safely"):
        register_model(model, "custom", "1", background=Xn, models_dir=tmp_path)
    assert not (tmp_path / "custom" / "1").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "../evil"}, "must match"),
        ({"name": "Bad Name"}, "must match"),
        ({"version": "a/b"}, "must match"),
        ({"favorable": "maybe"}, "not a class name"),
        ({"task": "regression"}, "classification model"),
        ({"constraints": {"nope": {"mutable": False}}}, "unknown feature"),
        ({"constraints": {"income": {"range": [5, 1]}}}, "low <= high"),
        ({"background": pd.DataFrame()}, "non-empty"),
    ],
    ids=["traversal", "spaces", "version-slash", "favorable", "task", "constraint-name", "range", "empty-bg"],
)
def test_bad_registrations_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = _tiny()
    Xn = X[["income", "children"]]
    model = LogisticRegression().fit(Xn, y)
    args = {"name": "ok", "background": Xn, "models_dir": tmp_path, **kwargs}
    with pytest.raises(RegistrationError, match=message):
        register_model(model, **args)


def test_unknown_model_and_version(registry: ModelRegistry) -> None:
    with pytest.raises(ModelNotFound):
        registry.get("nope")
    with pytest.raises(ModelNotFound, match="version '9'"):
        registry.get("german-credit", "9")


def test_a_version_registered_while_serving_is_seen(models_dir: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    registry = ModelRegistry(models_dir)
    assert registry.versions("german-credit") == ["1"]
    X, y = _tiny()
    Xn = X[["income", "children"]]
    register_model(
        LogisticRegression().fit(Xn, y), "german-credit", "2", background=Xn, models_dir=models_dir
    )
    assert registry.versions("german-credit") == ["1", "2"]
    assert registry.get("german-credit").version == "2"
    assert registry.versions("../etc") == []
