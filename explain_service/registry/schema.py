"""Feature schema and counterfactual constraints of a registered model.

A model's inputs are described by a tuple of :class:`Feature` objects, inferred
from the background rows at registration and stored in the manifest. The same
objects drive request validation, the explainers' perturbations and the
plain-language reasons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from explain_service.fairness.groups import check_edges

FeatureKind = Literal["numeric", "integer", "categorical", "boolean"]
FEATURE_KINDS: tuple[str, ...] = ("numeric", "integer", "categorical", "boolean")
Direction = Literal["increase", "decrease"]

# The values a model is given exactly, whatever its library: scikit-learn trees and XGBoost read
# their input as float32, so a larger number becomes infinity; every integer a float64 holds
# exactly lies within 2**53, and past it a cast silently changes the value (2**63 - 1 becomes
# 2**63, which wraps to -2**63 when cast back to int64).
NUMERIC_BOUND = float(np.finfo(np.float32).max)
INTEGER_BOUND = 2**53


def value_bound(kind: str) -> float | None:
    """Largest magnitude a feature of ``kind`` may take (None for categorical and boolean)."""
    if kind == "numeric":
        return NUMERIC_BOUND
    if kind == "integer":
        return INTEGER_BOUND
    return None


@dataclass(frozen=True)
class Feature:
    """One original input column of a model.

    ``categories`` is set for categorical features only (values are strings; for a
    categorical column fed straight to an XGBoost model with native categorical
    support, their order is the category codes' order); ``min``/``max`` are the
    values observed in the background sample for numeric and integer features.
    ``missing`` says whether the model takes a missing value (NaN) for this
    feature: then ``null`` or an absent key is accepted and passed on as NaN.
    """

    name: str
    kind: FeatureKind
    categories: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    description: str | None = None
    missing: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.categories is not None:
            out["categories"] = list(self.categories)
        if self.min is not None:
            out["min"] = self.min
            out["max"] = self.max
        if self.missing:
            out["missing"] = True
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Feature:
        cats = data.get("categories")
        return cls(
            name=str(data["name"]),
            kind=data["kind"],
            categories=tuple(str(c) for c in cats) if cats is not None else None,
            min=data.get("min"),
            max=data.get("max"),
            description=data.get("description"),
            missing=bool(data.get("missing", False)),
        )

    @property
    def is_numeric(self) -> bool:
        """True for numeric and integer features (ordered, with a range)."""
        return self.kind in ("numeric", "integer")

    @property
    def dtype(self) -> Any:
        """The numpy dtype of this feature's column in typed rows.

        Integer features that take missing values are held as float64 (NaN for missing),
        boolean ones as objects (True, False or NaN); missing categories are NaN in an
        object column.
        """
        if self.missing and self.kind == "integer":
            return np.float64
        if self.missing and self.kind == "boolean":
            return object
        return NUMPY_DTYPES[self.kind]


@dataclass(frozen=True)
class Constraint:
    """How a counterfactual may change one feature.

    ``forbidden`` lists categories a counterfactual never proposes (e.g. "unknown" or
    "unemployed"); an instance that already has one keeps it unless another is proposed.
    """

    mutable: bool = True
    direction: Direction | None = None
    range: tuple[float, float] | None = None
    forbidden: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mutable": self.mutable}
        if self.direction is not None:
            out["direction"] = self.direction
        if self.range is not None:
            out["range"] = list(self.range)
        if self.forbidden:
            out["forbidden"] = list(self.forbidden)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Constraint:
        rng = data.get("range")
        return cls(
            mutable=bool(data.get("mutable", True)),
            direction=data.get("direction"),
            range=(float(rng[0]), float(rng[1])) if rng is not None else None,
            forbidden=tuple(str(c) for c in data.get("forbidden") or ()),
        )


@dataclass(frozen=True)
class FeatureSchema:
    """The ordered features of a model plus their constraints and sensitive features.

    ``sensitive`` maps each sensitive feature to its bin edges (numeric) or ``None``
    (grouped by value); :func:`explain_service.fairness.groups.group_labels` turns values
    into group labels with them.
    """

    features: tuple[Feature, ...]
    constraints: dict[str, Constraint] = field(default_factory=dict)
    sensitive: dict[str, tuple[float, ...] | None] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def __getitem__(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def constraint(self, name: str) -> Constraint:
        return self.constraints.get(name, Constraint())

    def flags(self, rows: pd.DataFrame | Mapping[str, Any]) -> list[dict[str, list[str]]]:
        """Per row, the features outside what the background showed at registration.

        ``rows`` is a frame or its columns by name (arrays: reading them back from a frame costs
        more than the check on a one-row request). ``out_of_range``: numeric or integer values
        below the observed min or above the max; ``missing``: features with no value. Empty lists
        are left out.
        """
        n = len(rows) if isinstance(rows, pd.DataFrame) else len(rows[self.names[0]]) if self.names else 0
        out: list[dict[str, list[str]]] = [{} for _ in range(n)]
        for f in self.features:
            col = np.asarray(rows[f.name])
            if f.is_numeric and f.min is not None and f.max is not None:
                values = col.astype(np.float64)
                with np.errstate(invalid="ignore"):
                    beyond = (values < float(f.min)) | (values > float(f.max))
                for i in np.flatnonzero(beyond).tolist():
                    out[i].setdefault("out_of_range", []).append(f.name)
            if f.missing:
                for i in np.flatnonzero(pd.isna(col)).tolist():
                    out[i].setdefault("missing", []).append(f.name)
        return out

    def coerce(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Return ``frame`` with the schema's column order and dtypes.

        numeric -> float64, integer -> int64 (float64 when it takes missing values),
        categorical -> object (str, NaN when missing), boolean -> bool. The caller
        guarantees the values already validate.
        """
        cols: dict[str, Any] = {}
        for f in self.features:
            col = frame[f.name]
            if f.kind == "categorical":
                missing = col.isna().to_numpy()
                text = col.astype(object).astype(str).to_numpy(dtype=object)
                text[missing] = np.nan
                cols[f.name] = pd.Series(text, index=frame.index, dtype=object)
            else:
                cols[f.name] = col.astype(f.dtype)
        return pd.DataFrame(cols, index=frame.index)


NUMPY_DTYPES = {"numeric": np.float64, "integer": np.int64, "boolean": np.bool_, "categorical": object}


def columns_from_records(schema: FeatureSchema, records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """One typed array per feature from validated records (what the compiled transform reads).

    An absent or null value of a feature that takes missing values becomes NaN.
    """
    columns: dict[str, np.ndarray] = {
        f.name: np.array([r.get(f.name) for r in records], dtype=f.dtype) for f in schema.features
    }
    for f in schema.features:
        if f.missing and f.dtype is object:
            col = columns[f.name]
            col[pd.isna(col)] = np.nan
    return columns


def frame_from_records(schema: FeatureSchema, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Typed rows from validated records, built column by column (no per-column casts)."""
    return pd.DataFrame(columns_from_records(schema, records), copy=False)


def _as_number(value: Any) -> float:
    out = float(value)
    return int(out) if out.is_integer() and abs(out) < 2**53 else out


def infer_feature(name: str, column: pd.Series) -> Feature:
    """Infer a :class:`Feature` from a background column.

    Missing values (NaN, None) mark the feature as taking missing values; the kind and
    range come from the values present. A pandas ``category`` column keeps its
    categories in the dtype's order.
    """
    missing = bool(column.isna().any())
    if missing:
        column = column.dropna()
        if column.empty:
            raise ValueError(f"background column {name!r} has only missing values")
        return replace(infer_feature(name, column.infer_objects()), missing=True)
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return Feature(name, "categorical", categories=tuple(str(c) for c in dtype.categories))
    if pd.api.types.is_bool_dtype(dtype):
        return Feature(name, "boolean")
    if pd.api.types.is_integer_dtype(dtype):
        if max(abs(int(column.min())), abs(int(column.max()))) > INTEGER_BOUND:
            raise ValueError(f"background column {name!r} has integers beyond +/-2**53")
        return Feature(name, "integer", min=_as_number(column.min()), max=_as_number(column.max()))
    if pd.api.types.is_float_dtype(dtype):
        values = column.to_numpy(dtype=float)
        if not np.isfinite(values).all():
            raise ValueError(f"background column {name!r} has non-finite values")
        if np.abs(values).max(initial=0.0) > NUMERIC_BOUND:
            raise ValueError(f"background column {name!r} has values beyond the float32 range")
        return Feature(name, "numeric", min=_as_number(values.min()), max=_as_number(values.max()))
    categories = sorted({str(v) for v in column.tolist()})
    return Feature(name, "categorical", categories=tuple(categories))


def infer_schema(
    background: pd.DataFrame,
    overrides: dict[str, dict[str, Any]] | None = None,
    constraints: Mapping[str, Mapping[str, Any] | Constraint] | None = None,
    allow_missing: Sequence[str] = (),
    sensitive: Mapping[str, Sequence[float] | None] | None = None,
) -> FeatureSchema:
    """Infer the feature schema of ``background``; ``overrides`` replace fields per feature.

    Features named in ``allow_missing`` take missing values even when the background has none.
    ``sensitive`` features are checked (:func:`parse_sensitive`) and frozen for counterfactuals
    unless ``constraints`` gives them ``{"mutable": True}`` explicitly.
    """
    unknown = sorted(set(allow_missing) - {str(c) for c in background.columns})
    if unknown:
        raise ValueError(f"allow_missing names unknown features {unknown}")
    features = []
    for name in background.columns:
        feat = infer_feature(str(name), background[name])
        if name in allow_missing:
            feat = replace(feat, missing=True)
        if overrides and name in overrides:
            merged = {**feat.to_dict(), **overrides[name]}
            feat = Feature.from_dict(merged)
        features.append(feat)
    names = {f.name for f in features}
    parsed: dict[str, Constraint] = {}
    for name, spec in (constraints or {}).items():
        if name not in names:
            raise ValueError(f"constraint names unknown feature {name!r}")
        c = spec if isinstance(spec, Constraint) else Constraint.from_dict(dict(spec))
        if c.direction not in (None, "increase", "decrease"):
            raise ValueError(f"constraint direction of {name!r} must be 'increase' or 'decrease'")
        if c.range is not None and not (
            math.isfinite(c.range[0]) and math.isfinite(c.range[1]) and c.range[0] <= c.range[1]
        ):
            raise ValueError(f"constraint range of {name!r} must be [low, high] with low <= high")
        if c.forbidden:
            feat = next(f for f in features if f.name == name)
            unknown = [v for v in c.forbidden if v not in (feat.categories or ())]
            if feat.kind != "categorical" or unknown:
                raise ValueError(
                    f"constraint forbidden of {name!r} must list categories of a categorical feature"
                    + (f" (unknown: {unknown})" if feat.kind == "categorical" else "")
                )
        parsed[name] = c
    groups = parse_sensitive(features, sensitive or {})
    for name in groups:
        if not _explicitly_mutable((constraints or {}).get(name)):
            parsed[name] = replace(parsed.get(name, Constraint()), mutable=False)
    return FeatureSchema(tuple(features), parsed, groups)


def _explicitly_mutable(spec: Mapping[str, Any] | Constraint | None) -> bool:
    # A Constraint object cannot tell a default ``mutable=True`` from a chosen one, so only a
    # mapping that says ``"mutable": True`` lets a counterfactual change a sensitive feature.
    return isinstance(spec, Mapping) and spec.get("mutable") is True


def parse_sensitive(
    features: Sequence[Feature], sensitive: Mapping[str, Sequence[float] | None]
) -> dict[str, tuple[float, ...] | None]:
    """Check ``{feature: bin edges or None}`` against the features; raise ValueError naming the culprit."""
    if not isinstance(sensitive, Mapping):
        raise ValueError("sensitive must map feature names to bin edges or None")
    by_name = {f.name: f for f in features}
    out: dict[str, tuple[float, ...] | None] = {}
    for name, edges in sensitive.items():
        feat = by_name.get(str(name))
        if feat is None:
            raise ValueError(f"sensitive names unknown feature {name!r}")
        out[feat.name] = check_edges(feat.name, feat.kind, edges, feat.min, feat.max)
    return out
