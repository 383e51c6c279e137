"""A broken model is reported and skipped; every other model keeps serving.

Tiny seeded models are registered into a private directory; each test then breaks one of
them the way an operator or a disk would (one flipped byte, a refused artifact as the
newest version, a file changed while serving) and drives the app through its test client.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from explain_service.app import create_app
from explain_service.errors import ModelNotFound, ModelUnavailable
from explain_service.registry import ModelRegistry, register_model
from explain_service.registry.schema import frame_from_records
from tests.conftest import OPEN_ACCESS


def _data(n: int = 80, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "income": rng.normal(50, 10, n),
            "children": rng.integers(0, 4, n),
            "region": rng.choice(["north", "south", "east"], n),
        }
    )
    y = ((X.income > 50) ^ (X.region == "south")).astype(int).to_numpy()
    return X, y


def _pipeline(final: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = ColumnTransformer(
        [
            ("cat", OneHotEncoder(sparse_output=False), ["region"]),
            ("num", StandardScaler(), ["income", "children"]),
        ]
    )
    return Pipeline([("pre", pre), ("model", final)])


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    """Fitted pipelines by model name (the references the registry must reproduce)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    X, y = _data()
    return {
        "alpha": _pipeline(LogisticRegression()).fit(X, y),
        "beta": _pipeline(DecisionTreeClassifier(max_depth=3, random_state=0)).fit(X, y),
    }


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory, fitted: dict[str, Any]) -> Path:
    """``alpha`` version 1 and ``beta`` versions 1 and 2, registered once."""
    root = tmp_path_factory.mktemp("fault-models")
    X, _ = _data()
    register_model(fitted["alpha"], "alpha", "1", background=X, models_dir=root)
    register_model(fitted["beta"], "beta", "1", background=X, models_dir=root)
    register_model(fitted["beta"], "beta", "2", background=X, models_dir=root)
    return root


@pytest.fixture
def models(base_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(base_dir, target)
    return target


def _app(models: Path, tmp_path: Path, **settings: Any) -> Any:
    return create_app(
        {
            "models_dir": str(models),
            "database_url": f"sqlite:///{tmp_path / 'audit.sqlite3'}",
            "plots_dir": str(tmp_path / "plots"),
            "TESTING": True,
            **OPEN_ACCESS,
            **settings,
        }
    )


def flip_byte(path: Path, *, keep_mtime: bool = False) -> None:
    """Flip one byte in the middle of ``path`` (size unchanged)."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def add_refused_version(models: Path, name: str, source: str, version: str) -> Path:
    """A copy of ``source`` as ``version`` whose estimator is a pickle stream the manifest vouches for."""
    src, dst = models / name / source, models / name / version
    shutil.copytree(src, dst)
    payload = b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."
    (dst / "estimator.skops").write_bytes(payload)
    manifest = orjson.loads((dst / "manifest.json").read_bytes())
    manifest["version"] = version
    manifest["files"]["estimator.skops"] = hashlib.sha256(payload).hexdigest()
    (dst / "manifest.json").write_bytes(orjson.dumps(manifest))
    return dst


ROW = {"income": 61.5, "children": 2, "region": "south"}


def _post(client: Any, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    r = client.post(path, data=orjson.dumps(body), content_type="application/json")
    return r.status_code, r.get_json()


def _own_proba(fitted: dict[str, Any], name: str, rows: list[dict[str, Any]]) -> np.ndarray:
    return np.asarray(fitted[name].predict_proba(pd.DataFrame(rows)))


def _assert_unavailable(status: int, body: Any, name: str, version: str) -> None:
    assert status == 503, body
    assert body["code"] == 503 and body["status"] == "Service Unavailable"
    assert "model_unavailable" in body["message"]
    assert repr(name) in body["message"] and repr(version) in body["message"]


def test_a_corrupted_model_is_reported_while_the_others_serve(
    models: Path, tmp_path: Path, fitted: dict[str, Any]
) -> None:
    flip_byte(models / "alpha" / "1" / "estimator.skops")
    client = _app(models, tmp_path).test_client()  # eager loading must not raise

    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.get_json()
    assert [(u["name"], u["version"]) for u in body["unavailable"]] == [("alpha", "1")]
    assert any("alpha" in m and "estimator.skops" in m for m in body["errors"]["models"])

    listing = client.get("/v1/models")
    assert listing.status_code == 200
    by_name = {m["name"]: m for m in listing.get_json()["models"]}
    assert by_name["alpha"]["versions"] == ["1"] and by_name["alpha"]["default_version"] is None
    (entry,) = by_name["alpha"]["version_status"]
    assert entry["version"] == "1" and entry["status"] == "unavailable"
    assert "sha256" in entry["reason"] and "estimator.skops" in entry["reason"]
    assert by_name["beta"]["default_version"] == "2"
    assert str(tmp_path) not in listing.get_data(as_text=True)

    for status, answer in (
        _post(client, "/v1/models/alpha:predict", {"instances": [ROW]}),
        _post(client, "/v1/models/alpha/versions/1:explain", {"instances": [ROW], "methods": ["shap"]}),
        (client.get("/v1/models/alpha").status_code, client.get("/v1/models/alpha").get_json()),
        (
            client.get("/v1/models/alpha/versions/1").status_code,
            client.get("/v1/models/alpha/versions/1").get_json(),
        ),
    ):
        _assert_unavailable(status, answer, "alpha", "1")
        assert str(tmp_path) not in orjson.dumps(answer).decode()

    status, answer = _post(client, "/v1/models/beta:predict", {"instances": [ROW]})
    assert status == 200 and answer["model"]["version"] == "2"
    got = [p["probabilities"]["1"] for p in answer["predictions"]]
    np.testing.assert_allclose(got, _own_proba(fitted, "beta", [ROW])[:, 1], rtol=0, atol=1e-12)


def test_a_refused_newest_version_is_marked_and_the_newest_healthy_one_serves(
    models: Path, tmp_path: Path, fitted: dict[str, Any]
) -> None:
    add_refused_version(models, "beta", "2", "3")
    client = _app(models, tmp_path).test_client()

    listing = client.get("/v1/models")
    assert listing.status_code == 200
    beta = {m["name"]: m for m in listing.get_json()["models"]}["beta"]
    assert beta["versions"] == ["1", "2", "3"] and beta["default_version"] == "2"
    status_by_version = {e["version"]: e for e in beta["version_status"]}
    assert status_by_version["2"]["status"] == "available" and "reason" not in status_by_version["2"]
    assert status_by_version["3"]["status"] == "unavailable"
    assert "pickle" in status_by_version["3"]["reason"]

    described = client.get("/v1/models/beta")
    assert described.status_code == 200
    assert described.get_json()["version"] == "2"
    assert described.get_json()["versions"] == ["1", "2", "3"]

    status, answer = _post(client, "/v1/models/beta:explain", {"instances": [ROW], "methods": ["shap"]})
    assert status == 200 and answer["model"]["version"] == "2"
    (item,) = answer["explanations"]
    assert item["prediction"]["probabilities"]["1"] == pytest.approx(
        _own_proba(fitted, "beta", [ROW])[0, 1], abs=1e-12
    )

    _assert_unavailable(
        *_post(client, "/v1/models/beta/versions/3:predict", {"instances": [ROW]}), "beta", "3"
    )
    r = client.get("/v1/models/beta/versions/3")
    _assert_unavailable(r.status_code, r.get_json(), "beta", "3")
    assert client.get("/readyz").status_code == 503
    assert client.get("/v1/models/beta/versions/9").status_code == 404


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["rewritten", "same-size-and-mtime"])
def test_files_changed_while_serving_make_that_model_unavailable(
    models: Path, tmp_path: Path, keep_mtime: bool
) -> None:
    client = _app(models, tmp_path, model_recheck_seconds=0).test_client()
    assert client.get("/readyz").status_code == 200
    assert _post(client, "/v1/models/alpha:predict", {"instances": [ROW]})[0] == 200

    artifact = models / "alpha" / "1" / "estimator.skops"
    original = artifact.read_bytes()
    flip_byte(artifact, keep_mtime=keep_mtime)

    ready = client.get("/readyz")  # readiness hashes every file, whatever stat says
    assert ready.status_code == 503
    assert [(u["name"], u["version"]) for u in ready.get_json()["unavailable"]] == [("alpha", "1")]
    _assert_unavailable(*_post(client, "/v1/models/alpha:predict", {"instances": [ROW]}), "alpha", "1")
    assert _post(client, "/v1/models/beta:predict", {"instances": [ROW]})[0] == 200

    artifact.write_bytes(original)  # put right: served again without a restart
    assert client.get("/readyz").status_code == 200
    assert _post(client, "/v1/models/alpha:predict", {"instances": [ROW]})[0] == 200


def test_a_rewritten_file_is_noticed_by_requests_after_the_recheck_interval(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("explain_service.registry.watch.monotonic", lambda: clock[0])
    client = _app(models, tmp_path, model_recheck_seconds=30).test_client()
    assert _post(client, "/v1/models/alpha:predict", {"instances": [ROW]})[0] == 200
    flip_byte(models / "alpha" / "1" / "estimator.skops")
    # Inside the interval the cached verdict holds; after it, the stat check notices.
    assert _post(client, "/v1/models/alpha:predict", {"instances": [ROW]})[0] == 200
    clock[0] += 31
    _assert_unavailable(*_post(client, "/v1/models/alpha:predict", {"instances": [ROW]}), "alpha", "1")


def test_a_touched_but_unchanged_file_stays_available(models: Path, tmp_path: Path) -> None:
    client = _app(models, tmp_path, model_recheck_seconds=0).test_client()
    artifact = models / "alpha" / "1" / "estimator.skops"
    artifact.write_bytes(artifact.read_bytes())
    os.utime(artifact, (1, 1))
    assert _post(client, "/v1/models/alpha:predict", {"instances": [ROW]})[0] == 200
    assert client.get("/readyz").status_code == 200


def test_registry_reports_broken_versions_as_values(models: Path) -> None:
    flip_byte(models / "beta" / "1" / "background.csv")
    add_refused_version(models, "beta", "2", "3")
    registry = ModelRegistry(models)
    loaded = registry.load_all()
    assert sorted((m.name, m.version) for m in loaded) == [("alpha", "1"), ("beta", "2")]
    broken = {(b.name, b.version): b.reason for b in registry.unavailable()}
    assert set(broken) == {("beta", "1"), ("beta", "3")}
    assert "background.csv" in broken[("beta", "1")] and "pickle" in broken[("beta", "3")]
    assert not any(str(models) in reason for reason in broken.values())
    assert registry.default_version("beta") == "2"
    with pytest.raises(ModelUnavailable, match=r"model_unavailable.*'beta'.*'3'.*pickle"):
        registry.get("beta", "3")

    shutil.rmtree(models / "beta" / "3")  # a version removed from disk is gone, not broken
    assert [(b.name, b.version) for b in registry.unavailable()] == [("beta", "1")]
    with pytest.raises(ModelNotFound):
        registry.get("beta", "3")


def test_readiness_reports_an_audit_store_that_refuses_writes(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(models, tmp_path)
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    store = app.extensions["explain"].audit

    def refuse() -> None:
        raise OSError("attempt to write a readonly database at /secret/host:5432/name")

    monkeypatch.setattr(store, "check_writable", refuse, raising=False)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["errors"]["audit"] == ["The audit store does not accept writes."]
    assert "/secret" not in ready.get_data(as_text=True)


# -- per-request transformed rows -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alpha", "beta"])
def test_predictions_follow_reordered_and_filtered_frames(
    base_dir: Path, fitted: dict[str, Any], name: str
) -> None:
    model = ModelRegistry(base_dir).get(name, "1")
    assert model.transform_path == "compiled"  # the path that read the column arrays
    X, _ = _data(12, seed=3)
    rows = frame_from_records(model.schema, X.to_dict("records"))
    reference = fitted[name]

    np.testing.assert_allclose(model.predict_proba(rows), reference.predict_proba(X), rtol=0, atol=1e-12)
    reversed_rows, reversed_X = rows.iloc[::-1], X.iloc[::-1]
    np.testing.assert_allclose(
        model.predict_proba(reversed_rows), reference.predict_proba(reversed_X), rtol=0, atol=1e-12
    )
    keep = (X["region"] != "south").to_numpy()
    filtered = rows[keep]
    np.testing.assert_allclose(
        model.predict_proba(filtered), reference.predict_proba(X[keep]), rtol=0, atol=1e-12
    )
    same_length = pd.concat([rows.iloc[6:], rows.iloc[:6]])
    expected = reference.predict_proba(pd.concat([X.iloc[6:], X.iloc[:6]]))
    np.testing.assert_allclose(model.predict_proba(same_length), expected, rtol=0, atol=1e-12)

    prepared = model.prepare(rows)
    np.testing.assert_allclose(
        model.proba_matrix(prepared.matrix), reference.predict_proba(X), rtol=0, atol=1e-12
    )
    assert not rows.attrs and not reversed_rows.attrs


def test_shap_explains_the_frame_it_is_given_not_an_earlier_one(
    base_dir: Path, fitted: dict[str, Any]
) -> None:
    from explain_service.explainers.shap import ShapExplainer, ShapOptions

    model = ModelRegistry(base_dir).get("alpha", "1")
    X, _ = _data(9, seed=5)
    rows = frame_from_records(model.schema, X.to_dict("records"))
    ones = np.ones(len(rows), dtype=int)
    options = ShapOptions().load({})
    explainer = ShapExplainer()
    reference = fitted["alpha"]

    first = explainer.attributions(model, model.prepare(rows), ones, options)
    np.testing.assert_allclose(first.out, reference.decision_function(X), rtol=0, atol=1e-12)
    for picked, frame in ((rows.iloc[::-1], X.iloc[::-1]), (rows.iloc[[4, 0, 7]], X.iloc[[4, 0, 7]])):
        n = len(picked)
        for given in (picked, model.prepare(picked)):
            arrays = explainer.attributions(model, given, ones[:n], options)
            np.testing.assert_allclose(arrays.out, reference.decision_function(frame), rtol=0, atol=1e-12)
            assert np.abs(arrays.residuals()).max() < 1e-9

    other = ModelRegistry(base_dir).get("beta", "1").prepare(rows)  # another model's matrix is not reused
    arrays = explainer.attributions(model, other, ones, options)
    np.testing.assert_allclose(arrays.out, reference.decision_function(X), rtol=0, atol=1e-12)
