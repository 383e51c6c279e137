"""Understanding a pipeline's preprocessing.

Two things are derived from a fitted scikit-learn preprocessor:

* :func:`feature_map`: for every transformed column, the index of the original
  input feature it came from, so attributions on one-hot columns can be summed
  back to the feature the caller sent.
* :func:`compile_transform`: a numpy-only re-implementation of the common
  transformers (ColumnTransformer, Pipeline, OneHotEncoder, OrdinalEncoder,
  StandardScaler, MinMaxScaler, SimpleImputer without indicator, passthrough,
  drop). scikit-learn's DataFrame handling costs a millisecond or more per call,
  several times the TreeSHAP of one row; the compiled path is used only when
  :func:`compiled_agrees` finds it equal to ``transform`` at load time.

Missing values (NaN, as typed rows hold them) follow scikit-learn's rules: a
SimpleImputer fills them with its fitted statistics, a OneHotEncoder that saw
NaN when fitted gives it its own column (one that did not gives zeros, as
``handle_unknown="ignore"`` does), an OrdinalEncoder writes its
``encoded_missing_value``, scalers and passthrough carry NaN on. Whatever is
not covered here is caught by the agreement check, which also runs on the
background with NaN injected into every feature that takes missing values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
)

Columns = dict[str, np.ndarray]
Compiled = Callable[[Columns], np.ndarray]


class NotMappable(ValueError):
    """The transformed columns cannot be attributed to input features."""


def _resolve_columns(spec: Any, names: list[str]) -> list[int]:
    if isinstance(spec, str):
        return [names.index(spec)]
    if isinstance(spec, slice):
        return list(range(len(names)))[spec]
    if callable(spec):
        raise NotMappable("callable column selectors are not supported")
    arr = np.asarray(spec)
    if arr.dtype == bool:
        return [int(i) for i in np.flatnonzero(arr)]
    if arr.dtype.kind in "iu":
        return [int(i) for i in arr]
    return [names.index(str(s)) for s in arr]


def _ct_parts(ct: ColumnTransformer, names: list[str]) -> list[tuple[Any, list[int], slice]]:
    parts = []
    for name, trans, cols in ct.transformers_:
        out = ct.output_indices_[name]
        parts.append((trans, _resolve_columns(cols, names), out))
    return parts


def feature_map(trans: Any, names: list[str]) -> list[int]:
    """For each output column of ``trans``, the index into ``names`` it derives from."""
    if _is_identity(trans):
        return list(range(len(names)))
    if isinstance(trans, str) and trans == "drop":
        return []
    if isinstance(trans, ColumnTransformer):
        n_out = sum(s.stop - s.start for _, _, s in _ct_parts(trans, names))
        mapping = [-1] * n_out
        for sub, idx, out in _ct_parts(trans, names):
            sub_map = feature_map(sub, [names[i] for i in idx])
            if len(sub_map) != out.stop - out.start:
                raise NotMappable(f"transformer output width mismatch in {type(sub).__name__}")
            for k, j in enumerate(sub_map):
                mapping[out.start + k] = idx[j]
        return mapping
    if isinstance(trans, Pipeline):
        current = list(range(len(names)))
        step_names = names
        for _, step in trans.steps:
            if step is None or step == "passthrough":
                continue
            step_map = feature_map(step, step_names)
            current = [current[j] for j in step_map]
            step_names = [f"x{i}" for i in range(len(current))]
        return current
    if isinstance(trans, OneHotEncoder):
        outs = list(trans.get_feature_names_out(names))
        mapping = []
        for out in outs:
            owners = [i for i, n in enumerate(names) if str(out).startswith(f"{n}_")]
            if not owners:
                raise NotMappable(f"one-hot column {out!r} matches no input feature")
            mapping.append(max(owners, key=lambda i: len(names[i])))
        return mapping
    try:
        n_out = len(trans.get_feature_names_out(names))
    except Exception as exc:
        raise NotMappable(f"{type(trans).__name__} does not report its output columns") from exc
    if n_out != len(names):
        raise NotMappable(f"{type(trans).__name__} changes the number of columns ({len(names)} -> {n_out})")
    return list(range(len(names)))


def _is_identity(trans: Any) -> bool:
    # A fitted ColumnTransformer stores "passthrough" as a FunctionTransformer without a function.
    return (
        trans is None
        or (isinstance(trans, str) and trans == "passthrough")
        or (isinstance(trans, FunctionTransformer) and trans.func is None)
    )


def _compile(trans: Any, names: list[str]) -> Compiled | None:
    if _is_identity(trans):
        return lambda cols: np.column_stack([cols[n].astype(np.float64) for n in names])
    if isinstance(trans, ColumnTransformer):
        pieces = []
        for sub, idx, out in _ct_parts(trans, names):
            if out.stop == out.start:
                continue
            fn = _compile(sub, [names[i] for i in idx])
            if fn is None:
                return None
            pieces.append(fn)
        return lambda cols: np.hstack([p(cols) for p in pieces])
    if isinstance(trans, Pipeline):
        return _compile_pipeline(trans, names)
    if isinstance(trans, OneHotEncoder):
        if getattr(trans, "_infrequent_enabled", False):
            return None
        cats = [np.asarray(c, dtype=object) for c in trans.categories_]
        drop = trans.drop_idx_
        keep = [
            np.array([k for k in range(len(c)) if drop is None or drop[i] is None or k != drop[i]], dtype=int)
            for i, c in enumerate(cats)
        ]
        # A NaN category (seen when fitting) matches missing cells; NaN == NaN is False, so it is
        # compared through the mask instead.
        nan_cats = [_nan_mask(c[keep[i]]) for i, c in enumerate(cats)]

        def onehot(cols: Columns) -> np.ndarray:
            blocks = []
            for i, n in enumerate(names):
                col = cols[n].astype(object)
                hits = col[:, None] == cats[i][None, keep[i]]
                if nan_cats[i].any():
                    hits[:, nan_cats[i]] = _nan_mask(col)[:, None]
                blocks.append(hits.astype(np.float64))
            return np.hstack(blocks)

        return onehot
    if isinstance(trans, OrdinalEncoder):
        return _compile_ordinal(trans, names)
    if isinstance(trans, StandardScaler):
        mean = trans.mean_ if trans.mean_ is not None else 0.0
        scale = trans.scale_ if trans.scale_ is not None else 1.0
        return lambda cols: (_stack(cols, names) - mean) / scale
    if isinstance(trans, MinMaxScaler):
        if trans.clip:
            lo, hi = trans.feature_range
            return lambda cols: np.clip(_stack(cols, names) * trans.scale_ + trans.min_, lo, hi)
        return lambda cols: _stack(cols, names) * trans.scale_ + trans.min_
    if isinstance(trans, SimpleImputer) and not trans.add_indicator:
        return _compile_imputer(trans, names)
    return None


def _nan_mask(values: np.ndarray) -> np.ndarray:
    """Where ``values`` hold a float NaN (the missing value of typed rows), for any dtype."""
    if values.dtype.kind == "f":
        return np.isnan(values)
    return np.fromiter((isinstance(v, float) and v != v for v in values), bool, len(values))


def _compile_imputer(trans: SimpleImputer, names: list[str]) -> Compiled | None:
    """Missing cells take the column's fitted statistic; numbers stay float, text stays object."""
    marker = trans.missing_values
    if not (isinstance(marker, float) and marker != marker):
        return None  # a sentinel such as -1 or "missing": rare, and left to scikit-learn
    stats = np.asarray(trans.statistics_, dtype=object)
    if len(stats) != len(names) or any(isinstance(v, float) and v != v for v in stats):
        return None  # a column that was empty when fitted is dropped by transform
    numeric = all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in stats)

    def impute(cols: Columns) -> np.ndarray:
        if numeric:
            out = _stack(cols, names)
            missing = np.isnan(out)
            if missing.any():
                out[missing] = np.broadcast_to(stats.astype(np.float64), out.shape)[missing]
            return out
        out = np.column_stack([cols[n].astype(object) for n in names])
        for j in range(out.shape[1]):
            out[_nan_mask(out[:, j]), j] = stats[j]
        return out

    return impute


def _compile_ordinal(trans: OrdinalEncoder, names: list[str]) -> Compiled | None:
    """Categories as their index; NaN as ``encoded_missing_value`` when the encoder saw NaN."""
    lookups = []
    missing_codes: list[float | None] = []
    for cats in trans.categories_:
        cats = np.asarray(cats, dtype=object)
        nan_at = _nan_mask(cats)
        lookups.append({v: float(k) for k, v in enumerate(cats) if not nan_at[k]})
        missing_codes.append(float(trans.encoded_missing_value) if nan_at.any() else None)

    def code(i: int, v: Any) -> float:
        if isinstance(v, float) and v != v:
            missing = missing_codes[i]
            if missing is None:
                raise ValueError("a missing value the encoder never saw")
            return missing
        return lookups[i][v]

    return lambda cols: np.column_stack(
        [np.array([code(i, v) for v in cols[n]], dtype=np.float64) for i, n in enumerate(names)]
    )


def _compile_pipeline(pipe: Pipeline, names: list[str]) -> Compiled | None:
    steps = [s for _, s in pipe.steps if s is not None and s != "passthrough"]
    if not steps:
        return _compile("passthrough", names)
    first = _compile(steps[0], names)
    if first is None:
        return None
    rest: list[Compiled] = []
    width_names = [f"x{i}" for i in range(len(feature_map(steps[0], names)))]
    for step in steps[1:]:
        fn = _compile(step, width_names)
        if fn is None:
            return None
        rest.append(fn)
        width_names = [f"x{i}" for i in range(len(feature_map(step, width_names)))]

    def run(cols: Columns) -> np.ndarray:
        out = first(cols)
        for fn in rest:
            out = fn({f"x{k}": out[:, k] for k in range(out.shape[1])})
        return out

    return run


def _stack(cols: Columns, names: list[str]) -> np.ndarray:
    return np.column_stack([cols[n].astype(np.float64) for n in names])


def compile_transform(preprocessor: Any, names: list[str]) -> Compiled | None:
    """A numpy-only version of ``preprocessor.transform``, or None when not every step is known."""
    try:
        return _compile(preprocessor, names)
    except Exception:
        return None


def with_missing(frame: pd.DataFrame, dtypes: dict[str, Any], *, seed: int = 0) -> pd.DataFrame:
    """``frame`` with NaN in about a third of the cells of each column of ``dtypes`` (and all of row 0).

    Columns take the given dtypes, as typed request rows hold them (NaN in float or object columns).
    """
    rng = np.random.default_rng(seed)
    out = frame.copy()
    for name, dtype in dtypes.items():
        column = np.array(frame[name].to_numpy(), dtype=dtype, copy=True)
        hole = rng.random(len(column)) < 0.35
        hole[:1] = True
        column[hole] = np.nan
        out[name] = column
    return out


def compiled_agrees(
    compiled: Compiled, preprocessor: Any, frames: list[pd.DataFrame], names: list[str]
) -> bool:
    """Whether ``compiled`` equals ``preprocessor.transform`` exactly (NaN where it has NaN) on every frame."""
    for frame in frames:
        try:
            fast = compiled({n: frame[n].to_numpy() for n in names})
            ref = preprocessor.transform(frame[names])
        except Exception:
            return False
        if hasattr(ref, "toarray"):
            # Sparse output changes what XGBoost treats as missing; keep the library path.
            return False
        ref = np.asarray(ref, dtype=np.float64)
        if fast.shape != ref.shape or not np.array_equal(fast, ref, equal_nan=True):
            return False
    return True
