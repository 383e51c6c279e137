"""Registering models on disk: check a fitted model, store it, load it back, prove it predicts the same.

Layout: ``<models_dir>/<name>/<version>/`` holds ``manifest.json``, the estimator artifact
(``estimator.skops`` or ``estimator.ubj``), the optional preprocessing (``preprocessor.skops``)
and ``background.csv``; reading them back is :mod:`explain_service.registry.loading`'s job.

:func:`register_model` does its jobs in order, and nothing is written before the
checks that need no files have passed:

1. the target directory (name, version, not taken);
2. the background: its columns must be the model's own input columns
   (:func:`model_input_columns`), reordered to the model's order;
3. the feature schema (kinds, categories, ranges, which features take missing values);
4. task and class names (:mod:`explain_service.registry.labels`: by label, never by position);
5. the version is written to a hidden temporary directory, loaded back and checked
   against the original model on the background rows, labels and probabilities both
   (:func:`check_round_trip`), and on rows with missing values where the schema allows
   them; only then is it renamed into place.

On any failure nothing stays on disk: the temporary directory is removed, and so is
``models/<name>/`` when this registration created it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from explain_service.errors import ArtifactRefused, RegistrationError
from explain_service.registry import artifacts
from explain_service.registry.labels import Labels, class_labels, infer_task
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
from explain_service.registry.review_rules import ReviewRules
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
MISSING_PROBE_ROWS = 32


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
    allow_missing: Sequence[str] = (),
    intended_use: str | None = None,
    owner: str | None = None,
    personal: Sequence[str] = (),
    sensitive: Mapping[str, Sequence[float] | None] | None = None,
    review_rules: Mapping[str, Any] | None = None,
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
        Raw input rows: one column per model input (``feature_names_in_`` where the model
        has it; extra or missing columns are refused by name). It defines the feature schema
        and the SHAP baseline; at most 1,000 rows are kept (a seeded sample when larger).
        A column with missing values (NaN) makes that feature take missing values.
    task, class_names, favorable
        Inferred from the model when omitted; ``favorable`` must be a class name.
        ``class_names`` must be the model's own labels (any order), or display names for
        integer-coded labels ``0..k-1`` in that order (see :mod:`~explain_service.registry.labels`).
    constraints
        Counterfactual constraints per feature: ``{"age": {"direction": "increase"},
        "sex": {"mutable": False}, "duration": {"range": [6, 72]},
        "savings": {"forbidden": ["unknown"]}}``.
    feature_overrides
        Per-feature fields replacing the inferred schema (e.g. ``{"job": {"kind": "categorical",
        "categories": [...]}}``).
    allow_missing
        Features that take missing values although the background has none there; the model
        must predict on rows with NaN in them.
    intended_use, owner
        What the model is for (and not for), and who answers for it: shown in the transparency report.
    personal
        Features holding personal data beyond the sensitive ones (a postcode, a birth date): withheld,
        like sensitive features, when incidents are exported with ``--redact``.
    sensitive
        Sensitive features and how to group them: ``{"sex": None, "age": [0, 25, 40, 60, 200]}``
        (bin edges, strictly increasing and covering the background's range, for numeric
        features; None for categorical ones). They are the default groups of bias audits, and
        counterfactuals never change them unless ``constraints`` gives them ``{"mutable": True}``
        explicitly.
    review_rules
        When an explanation is routed to a human reviewer (``review_required``), e.g.
        ``{"probability_band": 0.05, "sensitive_features": ["sex"]}``; omitted rules take their
        defaults and the manifest stores them all (:mod:`~explain_service.registry.review_rules`).

    Raises
    ------
    RegistrationError
        When the model, background or options cannot be stored faithfully; nothing is
        left on disk then.
    """
    target = _target_dir(models_dir, name, version)
    original = _check_background(model, background)
    try:
        schema = infer_schema(original, feature_overrides, constraints, allow_missing, sensitive)
    except (ValueError, KeyError) as exc:
        raise RegistrationError(str(exc)) from None
    unknown = [f for f in personal if f not in schema.names]
    if unknown:
        raise RegistrationError(f"personal features {unknown} are not among the model's features")
    try:
        rules = ReviewRules.from_dict(review_rules, tuple(schema.names))
    except ValueError as exc:
        raise RegistrationError(str(exc)) from None
    stored = schema.coerce(original)
    pre, final = _split(model)
    inferred = infer_task(final)
    if task is not None and task != inferred:
        raise RegistrationError(f"task {task!r} given, but the model is a {inferred} model")
    labels = class_labels(final, class_names) if inferred == "classification" else Labels((), ())
    if favorable is not None and favorable not in labels.names:
        raise RegistrationError(f"favorable {favorable!r} is not a class name ({', '.join(labels.names)})")
    blobs, est_ref, pre_ref = _artifacts(final, pre, stored)
    manifest = Manifest(
        name=name,
        version=target.name,
        task=inferred,
        class_names=labels.names,
        favorable=favorable,
        schema=schema,
        estimator=est_ref,
        preprocessor=pre_ref,
        background_file=BACKGROUND_NAME,
        files={k: artifacts.sha256_bytes(v) for k, v in blobs.items()},
        libraries=library_versions(("scikit-learn", "xgboost", "skops", "numpy", "pandas", "shap")),
        description=description or "",
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        intended_use=intended_use or "",
        owner=owner or "",
        personal=tuple(personal),
        review_rules=rules,
    )
    _write_checked(target, blobs, manifest, lambda loaded: _verify(model, loaded, original, labels))
    return manifest


def _target_dir(models_dir: str | os.PathLike[str] | None, name: str, version: str | None) -> Path:
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
    return target


def model_input_columns(model: Any) -> tuple[list[str] | None, int | None]:
    """The model's own input column names (None when it was fitted without names) and their count."""
    import xgboost as xgb

    if isinstance(model, xgb.Booster):
        names = model.feature_names
        return (list(names) if names else None), int(model.num_features())
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        return [str(n) for n in names], len(names)
    count = getattr(model, "n_features_in_", None)
    return None, int(count) if count is not None else None


def _check_background(model: Any, background: Any) -> pd.DataFrame:
    """The background in the model's column order (sampled to at most 1,000 rows), or a refusal."""
    if not isinstance(background, pd.DataFrame) or background.empty:
        raise RegistrationError("background must be a non-empty DataFrame of raw input rows")
    frame = background.copy()
    frame.columns = [str(c) for c in frame.columns]
    if len(set(frame.columns)) != len(frame.columns):
        raise RegistrationError("background has repeated column names")
    names, count = model_input_columns(model)
    if names is not None:
        extra = [c for c in frame.columns if c not in names]
        missing = [c for c in names if c not in frame.columns]
        if extra or missing:
            parts = []
            if extra:
                parts.append(f"columns the model does not take: {extra} (drop them)")
            if missing:
                parts.append(f"columns the model needs but the background lacks: {missing}")
            raise RegistrationError(
                f"background does not match the model's input columns: {'; '.join(parts)}"
            )
        frame = frame[names]
    elif count is not None and count != frame.shape[1]:
        raise RegistrationError(
            f"background has {frame.shape[1]} columns, the model was fitted on {count} features "
            "(fitted without column names, so the background's columns must be exactly those, in order)"
        )
    if len(frame) > MAX_BACKGROUND_ROWS:
        frame = frame.sample(MAX_BACKGROUND_ROWS, random_state=0).sort_index()
    return frame.reset_index(drop=True)


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


def _artifacts(
    final: Any, pre: Any | None, stored: pd.DataFrame
) -> tuple[dict[str, bytes], ArtifactRef, ArtifactRef | None]:
    est_ref, est_bytes = _serialize(final, "estimator")
    blobs = {est_ref.file: est_bytes, BACKGROUND_NAME: _background_csv(stored)}
    pre_ref = None
    if pre is not None:
        pre_ref, blobs_pre = _serialize(pre, "preprocessor")
        blobs[pre_ref.file] = blobs_pre
    return blobs, est_ref, pre_ref


def _write_checked(target: Path, blobs: dict[str, bytes], manifest: Manifest, check: Any) -> None:
    """Write into a temporary directory, load and ``check`` it, then rename it into place."""
    created = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for fname, data in blobs.items():
            (tmp / fname).write_bytes(data)
        (tmp / MANIFEST_NAME).write_bytes(manifest.to_json())
        os.chmod(tmp, 0o755)
        check(load_version_dir(tmp))
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):  # another registration put a version there meanwhile
                target.parent.rmdir()
        raise


def _verify(model: Any, loaded: LoadedModel, original: pd.DataFrame, labels: Labels) -> None:
    check_round_trip(model, loaded, original, loaded.background, labels)
    nullable = [f.name for f in loaded.schema.features if f.missing]
    if nullable:
        probe_original = original.head(MISSING_PROBE_ROWS).copy()
        probe_stored = loaded.background.head(MISSING_PROBE_ROWS).copy()
        for name in nullable:
            probe_original[name] = _blank(probe_original[name])
            probe_stored[name] = _blank(probe_stored[name])
        check_round_trip(model, loaded, probe_original, probe_stored, labels, missing=nullable)


def _blank(column: pd.Series) -> pd.Series:
    if isinstance(column.dtype, pd.CategoricalDtype):
        return pd.Series(pd.Categorical([np.nan] * len(column), dtype=column.dtype), index=column.index)
    if column.dtype == object:
        return pd.Series(np.nan, index=column.index, dtype=object)
    return pd.Series(np.nan, index=column.index, dtype=np.float64)


def check_round_trip(
    model: Any,
    loaded: LoadedModel,
    original: pd.DataFrame,
    stored: pd.DataFrame,
    labels: Labels,
    *,
    missing: list[str] | None = None,
) -> None:
    """The loaded model must answer ``stored`` rows as ``model`` answers the same ``original`` rows.

    Classifiers are compared by predicted label (by name) and by per-class probability;
    regressors by value. ``missing`` names the features blanked in both frames, for the messages.
    """
    where = f" with missing values in {missing}" if missing else ""
    try:
        expected, expected_labels = _original_output(model, original, labels)
    except Exception as exc:
        hint = (
            "; impute them inside a Pipeline (e.g. SimpleImputer) or use a model that takes missing values"
            if missing or original.isna().to_numpy().any()
            else ""
        )
        raise RegistrationError(
            f"the model cannot predict on the background rows{where}: {_first_line(exc)}{hint}"
        ) from None
    try:
        got = loaded.predict_proba(stored) if loaded.is_classifier else loaded.predict_value(stored)
    except Exception as exc:
        raise RegistrationError(
            f"the stored model cannot predict on the background rows{where}: {_first_line(exc)}"
        ) from None
    if loaded.is_classifier and expected.ndim == 1:
        got = got[:, 1]  # a binary booster predicts P(class 1) alone
    if expected.shape != got.shape or not np.allclose(expected, got, rtol=0, atol=1e-9, equal_nan=True):
        raise RegistrationError(f"the stored model does not reproduce the original's predictions{where}")
    if expected_labels is not None:
        proba = np.asarray(got)
        top = np.sort(proba, axis=1)
        clear = (top[:, -1] - top[:, -2]) > 1e-9  # a tie may be broken either way
        names = np.asarray(labels.names, dtype=object)
        answered = names[proba.argmax(axis=1)]
        # Some models (SVC with Platt scaling) predict labels their own probabilities do not rank
        # first; the service answers the most probable class, so only consistent rows are judged.
        consistent = names[np.asarray(expected).argmax(axis=1)] == expected_labels
        wrong = np.flatnonzero(clear & consistent & (answered != expected_labels))
        if wrong.size:
            i = int(wrong[0])
            raise RegistrationError(
                f"the stored model answers label {answered[i]!r} where the model predicts "
                f"{expected_labels[i]!r} (background row {i}{where})"
            )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _original_output(model: Any, frame: pd.DataFrame, labels: Labels) -> tuple[np.ndarray, np.ndarray | None]:
    """The original model's probabilities (or values) and, for classifiers, its labels by name."""
    import xgboost as xgb

    if isinstance(model, xgb.Booster):
        data = frame if model.feature_names else frame.to_numpy(dtype=np.float64)
        matrix = xgb.DMatrix(data, enable_categorical=True)
        return np.asarray(model.predict(matrix)), None
    if not labels.names:
        return np.asarray(model.predict(frame)).reshape(-1), None
    proba = np.asarray(model.predict_proba(frame))
    own = np.asarray([labels.display(v) for v in np.asarray(model.predict(frame)).tolist()], dtype=object)
    return proba, own
