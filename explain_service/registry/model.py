"""A registered model, loaded and ready to predict.

:class:`LoadedModel` splits the model into its preprocessing and its final
estimator, knows which explanation path the estimator takes (``tree``,
``linear`` or ``agnostic``), maps transformed columns back to input features,
and predicts on raw rows. It is built once per worker process and kept. A request's rows travel as
:class:`Prepared` (the frame with its transformed matrix), never as state
hidden on the frame.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from explain_service.registry.manifest import Manifest, sensitive_dict
from explain_service.registry.preprocess import (
    Compiled,
    NotMappable,
    compile_transform,
    compiled_agrees,
    feature_map,
    with_missing,
)
from explain_service.registry.schema import FeatureSchema

SKLEARN_TREES = (
    "DecisionTreeClassifier",
    "DecisionTreeRegressor",
    "ExtraTreeClassifier",
    "ExtraTreeRegressor",
    "RandomForestClassifier",
    "RandomForestRegressor",
    "ExtraTreesClassifier",
    "ExtraTreesRegressor",
    "GradientBoostingClassifier",
    "GradientBoostingRegressor",
)

warnings.filterwarnings("ignore", message="X does not have valid feature names")
warnings.filterwarnings("ignore", message="X has feature names, but")


def estimator_family(estimator: Any) -> str:
    """``tree``, ``linear`` or ``agnostic``: which exact SHAP path the estimator takes."""
    import xgboost as xgb
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel

    if isinstance(estimator, xgb.Booster | xgb.XGBModel):
        return "tree"
    if type(estimator).__name__ in SKLEARN_TREES and type(estimator).__module__.startswith("sklearn."):
        return "tree"
    if isinstance(estimator, LinearModel | LinearClassifierMixin) and hasattr(estimator, "coef_"):
        return "linear"
    return "agnostic"


def estimator_library(estimator: Any) -> str:
    """``xgboost-booster``, ``xgboost`` (sklearn wrapper) or ``sklearn``."""
    import xgboost as xgb

    if isinstance(estimator, xgb.Booster):
        return "xgboost-booster"
    if isinstance(estimator, xgb.XGBModel):
        return "xgboost"
    return "sklearn"


@dataclass(frozen=True)
class Prepared:
    """One request's typed rows and the estimator's matrix for them, built by one model.

    Passed explicitly from the caller to the prediction and every method, so the matrix
    is computed once and can never be taken for another frame's: pandas copies
    ``DataFrame.attrs`` onto derived frames, so nothing is remembered there.

    Rows prepared from their column arrays (a validated request) build their frame only when
    a method asks for it: the tree and linear paths read the matrix alone, and building a
    one-row DataFrame costs about as much as their whole computation. XGBoost's own copy of the
    matrix (a ``DMatrix``) is built once too, on first use, and shared by the prediction and
    SHAP: on one row, building it costs more than predicting from it.
    """

    matrix: np.ndarray
    model_sha256: str
    columns: Mapping[str, np.ndarray] | None = None  # the rows' column arrays, when the caller built them
    given_frame: pd.DataFrame | None = field(default=None, repr=False)
    _native: Any = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def frame(self) -> pd.DataFrame:
        """The typed rows as a frame (built from the columns on first use)."""
        if self.given_frame is None:
            assert self.columns is not None
            object.__setattr__(self, "given_frame", pd.DataFrame(dict(self.columns), copy=False))
        assert self.given_frame is not None
        return self.given_frame

    def column_arrays(self) -> Mapping[str, Any]:
        """The rows' columns by name: the arrays they were built from, else the frame's own."""
        return self.columns if self.columns is not None else self.frame

    def native(self, build: Callable[[np.ndarray], Any]) -> Any:
        """The estimator library's own container of :attr:`matrix`, ``build(matrix)`` on first use."""
        if self._native is None:
            object.__setattr__(self, "_native", build(self.matrix))
        return self._native


type Rows = pd.DataFrame | Prepared


def frame_of(rows: Rows) -> pd.DataFrame:
    """The typed frame of prepared or plain rows."""
    return rows.frame if isinstance(rows, Prepared) else rows


@dataclass
class LoadedModel:
    """One model version in memory: manifest, background, preprocessing and estimator."""

    manifest: Manifest
    background: pd.DataFrame
    estimator: Any
    preprocessor: Any | None = None
    family: str = field(init=False)
    library: str = field(init=False)
    transform_path: str = field(init=False)
    feature_index: np.ndarray | None = field(init=False, default=None)
    threads: int = field(init=False, default=-1)
    _compiled: Compiled | None = field(init=False, default=None, repr=False)
    _codes: dict[str, dict[str, float]] = field(init=False, default_factory=dict, repr=False)
    _cache: dict[str, Any] = field(init=False, default_factory=dict, repr=False)
    _sha256: str | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.library = estimator_library(self.estimator)
        self.family = estimator_family(self.estimator)
        names = self.schema.names
        if self.preprocessor is None:
            self.transform_path = "identity"
            self.feature_index = np.arange(len(names))
            self._codes = {
                f.name: {c: float(k) for k, c in enumerate(f.categories or ())}
                for f in self.schema.features
                if f.kind == "categorical"
            }
        else:
            try:
                self.feature_index = np.asarray(feature_map(self.preprocessor, names), dtype=int)
            except NotMappable:
                self.feature_index = None
            self._compiled = compile_transform(self.preprocessor, names)
            self.transform_path = "sklearn"
            if self._compiled is not None and self._compiled_agrees():
                self.transform_path = "compiled"
            else:
                self._compiled = None
        if self.family != "agnostic" and self.feature_index is None:
            # Exact per-column attributions cannot be summed back to the inputs.
            self.family = "agnostic"

    # -- identity -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def sha256(self) -> str:
        # Hashed once: a request reads it several times (caches, the answer, the audit record).
        if self._sha256 is None:
            self._sha256 = self.manifest.sha256
        return self._sha256

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.class_names

    @property
    def favorable(self) -> str | None:
        return self.manifest.favorable

    @property
    def schema(self) -> FeatureSchema:
        return self.manifest.schema

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"

    @property
    def native_categorical(self) -> bool:
        """Whether categorical features reach the estimator itself, as category codes (XGBoost)."""
        return bool(self._codes)

    def cached(self, key: str, build: Any) -> Any:
        """Per-model memo for explainer state (e.g. a shap explainer built once)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def set_threads(self, n: int) -> None:
        """Limit native threads used by the estimator (1 per worker when serving)."""
        self.threads = n
        if self.library == "xgboost-booster":
            self.estimator.set_param({"nthread": n})
        elif self.library == "xgboost":
            self.estimator.set_params(n_jobs=n)
            self.estimator.get_booster().set_param({"nthread": n})

    # -- transform ------------------------------------------------------------------------------
    def columns(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        """Column arrays of ``rows`` in schema order."""
        return {n: rows[n].to_numpy() for n in self.schema.names}

    def transform(self, rows: pd.DataFrame, columns: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The estimator's input matrix for raw ``rows`` (dense float64), computed afresh.

        ``columns`` are ``rows``' column arrays when the caller already holds them (reading
        them back from a frame costs more than the compiled preprocessing of one row).
        """
        if self._compiled is not None:
            return self._compiled(columns if columns is not None else self.columns(rows))
        return self._transform(rows)

    def prepare(self, rows: pd.DataFrame, columns: dict[str, np.ndarray] | None = None) -> Prepared:
        """``rows`` with their matrix, transformed once for a request's prediction and methods."""
        return Prepared(self.transform(rows, columns), self.sha256, columns, rows)

    def prepare_columns(self, columns: dict[str, np.ndarray]) -> Prepared:
        """Typed rows given as column arrays in schema order, with their matrix; no frame is built
        unless the compiled preprocessing is unavailable (scikit-learn's reads frames)."""
        if self._compiled is not None:
            return Prepared(self._compiled(columns), self.sha256, columns)
        return self.prepare(pd.DataFrame(columns, copy=False), columns)

    def matrix_of(self, rows: Rows) -> np.ndarray:
        """The matrix of prepared rows (when prepared by this model), else of a plain frame."""
        if isinstance(rows, Prepared) and rows.model_sha256 == self.sha256:
            return rows.matrix
        return self.transform(frame_of(rows))

    def _transform(self, rows: pd.DataFrame) -> np.ndarray:
        if self.preprocessor is None:
            if not self._codes:
                return rows[self.schema.names].to_numpy(dtype=np.float64)
            return np.column_stack([self._column_codes(rows, name) for name in self.schema.names])
        out = self.preprocessor.transform(rows[self.schema.names])
        if hasattr(out, "toarray"):
            out = out.toarray()
        return np.asarray(out, dtype=np.float64)

    def _column_codes(self, rows: pd.DataFrame, name: str) -> np.ndarray:
        """A column as float: numbers as they are, categories as their index in the schema (NaN if missing)."""
        codes = self._codes.get(name)
        if codes is None:
            return rows[name].to_numpy(dtype=np.float64)
        return np.array([codes.get(v, np.nan) for v in rows[name].tolist()], dtype=np.float64)

    def _compiled_agrees(self) -> bool:
        """The compiled path equals sklearn's on the background, and on it with NaN in every nullable feature."""
        assert self._compiled is not None
        frames = [self.background]
        nullable = {f.name: f.dtype for f in self.schema.features if f.missing}
        if nullable:
            frames.append(with_missing(self.background, nullable))
        return compiled_agrees(self._compiled, self.preprocessor, frames, self.schema.names)

    # -- predictions on the estimator's matrix ---------------------------------------------------
    def _dmatrix(self, X: np.ndarray) -> Any:
        import xgboost as xgb

        booster = self.booster()
        types = booster.feature_types
        # DMatrix defaults to every core; on one-row requests starting those threads costs
        # more than the TreeSHAP itself.
        return xgb.DMatrix(
            X,
            feature_names=booster.feature_names,
            feature_types=types,
            enable_categorical=bool(types) and "c" in types,
            nthread=self.threads,
        )

    def booster(self) -> Any:
        """The XGBoost booster (of a booster or of xgboost's scikit-learn wrapper)."""
        return self.estimator if self.library == "xgboost-booster" else self.estimator.get_booster()

    def dmatrix_of(self, rows: Rows) -> Any:
        """XGBoost's ``DMatrix`` of ``rows``: built once per prepared request (see :class:`Prepared`)."""
        if isinstance(rows, Prepared) and rows.model_sha256 == self.sha256:
            return rows.native(self._dmatrix)
        return self._dmatrix(self.matrix_of(rows))

    def _shares_dmatrix(self, rows: Rows) -> bool:
        """Whether predictions on ``rows`` read the prepared request's shared ``DMatrix``.

        Booster predictions always go through a ``DMatrix``; a binary scikit-learn wrapper's too
        when the rows are prepared, since SHAP builds that ``DMatrix`` anyway and predicting from
        it gives the same bytes as ``inplace_predict``, for less (and leaves XGBoost's margin
        cache filled for SHAP's own output).
        """
        if self.library == "xgboost-booster":
            return True
        return (
            self.library == "xgboost"
            and self.estimator.n_classes_ == 2
            and isinstance(rows, Prepared)
            and rows.model_sha256 == self.sha256
        )

    def proba_matrix(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, (n, n_classes)."""
        if self.library == "xgboost-booster":
            return self._proba_dmatrix(self._dmatrix(X))
        if self.library == "xgboost" and self.estimator.n_classes_ == 2:
            # What XGBClassifier.predict_proba computes for binary objectives, minus its overhead.
            p = self.estimator.get_booster().inplace_predict(X, validate_features=False)
            return np.vstack((1 - p, p)).T
        return np.asarray(self.estimator.predict_proba(X))

    def _proba_dmatrix(self, dm: Any) -> np.ndarray:
        # The DMatrix carries the booster's own feature names: validating them again is a cost only.
        p = self.booster().predict(dm, validate_features=False)
        return np.vstack((1 - p, p)).T if p.ndim == 1 else p

    def value_matrix(self, X: np.ndarray) -> np.ndarray:
        """Regression predictions, (n,)."""
        if self.library == "xgboost-booster":
            return np.asarray(self.estimator.predict(self._dmatrix(X)))
        return np.asarray(self.estimator.predict(X)).reshape(-1)

    def margin_matrix(self, X: np.ndarray) -> np.ndarray:
        """Raw margin (log-odds for binary, per-class scores for multiclass)."""
        if self.library == "xgboost-booster":
            return np.asarray(self.estimator.predict(self._dmatrix(X), output_margin=True))
        if self.library == "xgboost":
            return np.asarray(self.estimator.predict(X, output_margin=True))
        if self.is_classifier:
            return np.asarray(self.estimator.decision_function(X))
        return self.value_matrix(X)

    # -- predictions on raw rows ----------------------------------------------------------------
    def predict_proba(self, rows: Rows) -> np.ndarray:
        """Class probabilities of ``rows``, (n, n_classes)."""
        if self._shares_dmatrix(rows):
            return self._proba_dmatrix(self.dmatrix_of(rows))
        return self.proba_matrix(self.matrix_of(rows))

    def predict_value(self, rows: Rows) -> np.ndarray:
        """Regression predictions of ``rows``, (n,)."""
        if self.library == "xgboost-booster":
            return np.asarray(self.booster().predict(self.dmatrix_of(rows), validate_features=False))
        return self.value_matrix(self.matrix_of(rows))

    def describe(self) -> dict[str, Any]:
        """Public description for ``GET /v1/models/{name}``."""
        m = self.manifest
        return {
            "name": m.name,
            "version": m.version,
            "sha256": m.sha256,
            "task": m.task,
            "description": m.description,
            "intended_use": m.intended_use,
            "owner": m.owner,
            "class_names": list(m.class_names),
            "favorable": m.favorable,
            "features": [f.to_dict() for f in m.schema.features],
            "constraints": {k: c.to_dict() for k, c in m.schema.constraints.items()},
            "sensitive": sensitive_dict(m.sensitive),
            "estimator": m.estimator.cls,
            "shap_path": self.family,
            "transform_path": self.transform_path,
            "created_at": m.created_at,
            "libraries": m.libraries,
        }
