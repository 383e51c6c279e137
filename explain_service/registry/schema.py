"""Feature schema and counterfactual constraints of a registered model.

A model's inputs are described by a tuple of :class:`Feature` objects, inferred
from the background rows at registration and stored in the manifest. The same
objects drive request validation, the explainers' perturbations and the
plain-language reasons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

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

    ``categories`` is set for categorical features only (values are strings);
    ``min``/``max`` are the values observed in the background sample for
    numeric and integer features.
    """

    name: str
    kind: FeatureKind
    categories: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.categories is not None:
            out["categories"] = list(self.categories)
        if self.min is not None:
            out["min"] = self.min
            out["max"] = self.max
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
        )

    @property
    def is_numeric(self) -> bool:
        """True for numeric and integer features (ordered, with a range)."""
        return self.kind in ("numeric", "integer")


@dataclass(frozen=True)
class Constraint:
    """How a counterfactual may change one feature."""

    mutable: bool = True
    direction: Direction | None = None
    range: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mutable": self.mutable}
        if self.direction is not None:
            out["direction"] = self.direction
        if self.range is not None:
            out["range"] = list(self.range)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Constraint:
        rng = data.get("range")
        return cls(
            mutable=bool(data.get("mutable", True)),
            direction=data.get("direction"),
            range=(float(rng[0]), float(rng[1])) if rng is not None else None,
        )


@dataclass(frozen=True)
class FeatureSchema:
    """The ordered features of a model plus their constraints."""

    features: tuple[Feature, ...]
    constraints: dict[str, Constraint] = field(default_factory=dict)

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

    def coerce(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Return ``frame`` with the schema's column order and dtypes.

        numeric -> float64, integer -> int64, categorical -> object (str),
        boolean -> bool. The caller guarantees the values already validate.
        """
        cols: dict[str, Any] = {}
        for f in self.features:
            col = frame[f.name]
            if f.kind == "numeric":
                cols[f.name] = col.astype("float64")
            elif f.kind == "integer":
                cols[f.name] = col.astype("int64")
            elif f.kind == "boolean":
                cols[f.name] = col.astype("bool")
            else:
                cols[f.name] = col.astype(str).astype(object)
        return pd.DataFrame(cols, index=frame.index)


NUMPY_DTYPES = {"numeric": np.float64, "integer": np.int64, "boolean": np.bool_, "categorical": object}


def columns_from_records(schema: FeatureSchema, records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """One typed array per feature from validated records (what the compiled transform reads)."""
    return {
        f.name: np.array([r[f.name] for r in records], dtype=NUMPY_DTYPES[f.kind]) for f in schema.features
    }


def frame_from_records(schema: FeatureSchema, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Typed rows from validated records, built column by column (no per-column casts)."""
    return pd.DataFrame(columns_from_records(schema, records), copy=False)


def _as_number(value: Any) -> float:
    out = float(value)
    return int(out) if out.is_integer() and abs(out) < 2**53 else out


def infer_feature(name: str, column: pd.Series) -> Feature:
    """Infer a :class:`Feature` from a background column."""
    if column.isna().any():
        raise ValueError(f"background column {name!r} has missing values")
    dtype = column.dtype
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
) -> FeatureSchema:
    """Infer the feature schema of ``background``; ``overrides`` replace fields per feature."""
    features = []
    for name in background.columns:
        feat = infer_feature(str(name), background[name])
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
        parsed[name] = c
    return FeatureSchema(tuple(features), parsed)
