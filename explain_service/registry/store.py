"""Registering models on disk.

Layout: ``<models_dir>/<name>/<version>/`` holds ``manifest.json``, the
estimator artifact (``estimator.skops`` or ``estimator.ubj``), the optional
preprocessing (``preprocessor.skops``) and ``background.csv``. A version is
written to a temporary directory and renamed into place, so a reader never sees
half a model; it is then loaded back and must reproduce the original model's
predictions on the background rows, or the registration is undone.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from explain_service.errors import ArtifactRefused, RegistrationError
from explain_service.registry import artifacts
from explain_service.registry.loading import (
    ModelRegistry,
    list_names,
    list_versions,
    load_version_dir,
    read_background,
    read_manifest,
)
from explain_service.registry.manifest import MANIFEST_NAME, NAME_RE, VERSION_RE, ArtifactRef, Manifest
from explain_service.registry.model import LoadedModel
from explain_service.registry.schema import Constraint, infer_schema
from explain_service.versions import library_versions

# The load path lives in ``loading``; these names stay importable from here.
__all__ = [
    "ModelRegistry",
    "list_names",
    "list_versions",
    "load_version_dir",
    "next_version",
    "read_background",
    "read_manifest",
    "register_model",
]

BACKGROUND_NAME = "background.csv"
MAX_BACKGROUND_ROWS = 1000
DEFAULT_MODELS_DIR = "models"


def _split(model: Any) -> tuple[Any | None, Any]:
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline):
        steps = model.steps
        final = steps[-1][1]
        if len(steps) == 1:
            return None, final
        pre = steps[0][1] if len(steps) == 2 else Pipeline(steps[:-1])
        return pre, final
    return None, model


def _infer_task(final: Any) -> str:
    import xgboost as xgb
    from sklearn.base import is_classifier, is_regressor

    if isinstance(final, xgb.Booster):
        objective = str(final.attr("objective") or _booster_learner(final)[0])
        return "classification" if objective.startswith(("binary:", "multi:")) else "regression"
    if is_classifier(final):
        return "classification"
    if is_regressor(final):
        return "regression"
    raise RegistrationError(f"{type(final).__name__} is neither a classifier nor a regressor")


def _booster_learner(booster: Any) -> tuple[str, int]:
    """Objective name and number of classes from a Booster's own configuration."""
    import json

    learner = json.loads(booster.save_config())["learner"]
    return str(learner["objective"]["name"]), int(learner["learner_model_param"]["num_class"])


def _class_names(final: Any, given: list[str] | None) -> tuple[str, ...]:
    import xgboost as xgb

    if isinstance(final, xgb.Booster):
        objective, num_class = _booster_learner(final)
        n = 2 if objective.startswith("binary:") else int(final.attr("num_class") or num_class)
        names = given or [str(i) for i in range(n)]
        if len(names) != n:
            raise RegistrationError(f"class_names has {len(names)} entries, the booster has {n} classes")
        return tuple(str(c) for c in names)
    classes = [str(c) for c in getattr(final, "classes_", [])]
    if not classes:
        raise RegistrationError("the classifier has no classes_; is it fitted?")
    if given is not None:
        if len(given) != len(classes):
            raise RegistrationError(
                f"class_names has {len(given)} entries, the model has {len(classes)} classes"
            )
        return tuple(str(c) for c in given)
    return tuple(classes)


def _serialize(obj: Any, stem: str) -> tuple[ArtifactRef, bytes]:
    import xgboost as xgb

    cls = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if isinstance(obj, xgb.Booster | xgb.XGBModel):
        return ArtifactRef(f"{stem}.ubj", "xgboost-ubj", type(obj).__name__), artifacts.dump_xgboost(obj)
    try:
        data = artifacts.dump_skops(obj)
    except ArtifactRefused as exc:
        raise RegistrationError(exc.message) from None
    return ArtifactRef(f"{stem}.skops", "skops", cls), data


def _background_csv(frame: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue().encode()


def next_version(models_dir: Path, name: str) -> str:
    """One more than the highest numeric version of ``name`` ("1" for a new model)."""
    numeric = [int(v) for v in list_versions(models_dir, name) if v.isdigit()]
    return str(max(numeric, default=0) + 1)


def register_model(
    model: Any,
    name: str,
    version: str | None = None,
    *,
    background: pd.DataFrame,
    task: str | None = None,
    class_names: list[str] | None = None,
    favorable: str | None = None,
    constraints: Mapping[str, Mapping[str, Any] | Constraint] | None = None,
    models_dir: str | os.PathLike[str] | None = None,
    description: str | None = None,
    feature_overrides: dict[str, dict[str, Any]] | None = None,
) -> Manifest:
    """Store a fitted model in the registry and return its manifest.

    Parameters
    ----------
    model
        A fitted scikit-learn estimator or Pipeline (ColumnTransformer, OneHotEncoder,
        scalers around any estimator, xgboost's sklearn wrappers included) or an
        ``xgboost.Booster``.
    name, version
        ``models/<name>/<version>/``. ``version=None`` takes the next integer.
    background
        Raw input rows (a DataFrame with one column per feature, in the model's input
        order). It defines the feature schema and the SHAP baseline; at most
        1,000 rows are kept (a seeded sample when larger).
    task, class_names, favorable
        Inferred from the model when omitted; ``favorable`` must be a class name.
    constraints
        Counterfactual constraints per feature: ``{"age": {"direction": "increase"},
        "sex": {"mutable": False}, "duration": {"range": [6, 72]}}``.
    feature_overrides
        Per-feature fields replacing the inferred schema (e.g. ``{"job": {"kind": "categorical",
        "categories": [...]}}``).

    Raises
    ------
    RegistrationError
        When the model, background or options cannot be stored faithfully.
    """
    root = Path(
        models_dir if models_dir is not None else os.environ.get("EXPLAIN_MODELS_DIR", DEFAULT_MODELS_DIR)
    )
    if not NAME_RE.match(name):
        raise RegistrationError(f"name {name!r} must match {NAME_RE.pattern}")
    version = version if version is not None else next_version(root, name)
    if not VERSION_RE.match(version):
        raise RegistrationError(f"version {version!r} must match {VERSION_RE.pattern}")
    target = root / name / version
    if target.exists():
        raise RegistrationError(f"{name} version {version} already exists at {target}")
    if not isinstance(background, pd.DataFrame) or background.empty:
        raise RegistrationError("background must be a non-empty DataFrame of raw input rows")
    background = background.copy()
    background.columns = [str(c) for c in background.columns]
    if len(background) > MAX_BACKGROUND_ROWS:
        background = background.sample(MAX_BACKGROUND_ROWS, random_state=0).sort_index()
    background = background.reset_index(drop=True)
    try:
        schema = infer_schema(background, feature_overrides, constraints)
    except (ValueError, KeyError) as exc:
        raise RegistrationError(str(exc)) from None
    background = schema.coerce(background)

    pre, final = _split(model)
    inferred = _infer_task(final)
    if task is not None and task != inferred:
        raise RegistrationError(f"task {task!r} given, but the model is a {inferred} model")
    names = _class_names(final, class_names) if inferred == "classification" else ()
    if favorable is not None and favorable not in names:
        raise RegistrationError(f"favorable {favorable!r} is not a class name ({', '.join(names)})")

    est_ref, est_bytes = _serialize(final, "estimator")
    pre_ref, pre_bytes = _serialize(pre, "preprocessor") if pre is not None else (None, b"")
    bg_bytes = _background_csv(background)
    blobs = {est_ref.file: est_bytes, BACKGROUND_NAME: bg_bytes}
    if pre_ref is not None:
        blobs[pre_ref.file] = pre_bytes
    manifest = Manifest(
        name=name,
        version=version,
        task=inferred,
        class_names=names,
        favorable=favorable,
        schema=schema,
        estimator=est_ref,
        preprocessor=pre_ref,
        background_file=BACKGROUND_NAME,
        files={k: artifacts.sha256_bytes(v) for k, v in blobs.items()},
        libraries=library_versions(("scikit-learn", "xgboost", "skops", "numpy", "pandas", "shap")),
        description=description or "",
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
    try:
        for fname, data in blobs.items():
            (tmp / fname).write_bytes(data)
        (tmp / MANIFEST_NAME).write_bytes(manifest.to_json())
        os.chmod(tmp, 0o755)
        loaded = load_version_dir(tmp)
        _check_round_trip(model, loaded, background)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_round_trip(model: Any, loaded: LoadedModel, background: pd.DataFrame) -> None:
    import xgboost as xgb

    if isinstance(model, xgb.Booster):
        expected = np.asarray(model.predict(loaded._dmatrix(background.to_numpy(dtype=np.float64))))
        if not loaded.is_classifier:
            got = loaded.predict_value(background)
        else:
            # A binary booster predicts P(class 1) alone; the loaded model answers both columns.
            proba = loaded.predict_proba(background)
            got = proba[:, 1] if expected.ndim == 1 else proba
    elif loaded.is_classifier:
        expected = np.asarray(model.predict_proba(background))
        got = loaded.predict_proba(background)
    else:
        expected = np.asarray(model.predict(background)).reshape(-1)
        got = loaded.predict_value(background)
    if expected.shape != got.shape or not np.allclose(expected, got, rtol=0, atol=1e-9):
        raise RegistrationError(
            "the stored model does not reproduce the original's predictions on the background"
        )
