"""Helpers shared by the model-agnostic tabular explainers (lime, counterfactual).

They turn a model's background rows into per-feature statistics (scales, value
grids, category frequencies), build model-ready frames in schema dtypes, call
the model in bounded batches and resolve per-row seeds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from explain_service.deadline import check_deadline
from explain_service.explainers.base import ModelLike, derive_seed
from explain_service.registry.schema import Feature

# One model call never sees more rows than this; larger batches are split.
MAX_BATCH_ROWS = 65_536
_QUANTILE_LEVELS = np.linspace(0.05, 0.95, 19)
_STATS_CACHE_SIZE = 32


def samples_background(model: ModelLike) -> bool:
    """Whether the sampling explainers can explain ``model``: a classifier or regressor with
    background rows to sample from."""
    return model.task in ("classification", "regression") and len(model.background) > 0


@dataclass(frozen=True)
class FeatureStats:
    """What the explainers need to know about one feature's background values.

    ``mean`` and ``scale`` are the background mean and standard deviation (LIME's sampling unit);
    ``mad`` the distance unit of counterfactuals (median absolute deviation,
    falling back to the standard deviation, then the range, then 1).
    ``values``/``freqs`` list the categories (or False/True) with their
    background frequencies; ``grid`` holds background quantiles of ordered
    features and ``decimals`` the precision new numeric values are rounded to
    (None: unrounded). Statistics are over the values present; ``missing_share``
    is the share of background rows where the feature is missing.
    """

    feature: Feature
    mean: float = 0.0
    scale: float = 1.0
    mad: float = 1.0
    low: float = -np.inf
    high: float = np.inf
    grid: np.ndarray | None = None
    values: np.ndarray | None = None
    freqs: np.ndarray | None = None
    decimals: int | None = None
    missing_share: float = 0.0

    @property
    def name(self) -> str:
        return self.feature.name

    @property
    def kind(self) -> str:
        return self.feature.kind

    def index_of(self, value: Any) -> int:
        """Position of ``value`` among ``values`` (categorical and boolean features)."""
        assert self.values is not None
        hits = np.flatnonzero(self.values == value)
        return int(hits[0]) if hits.size else -1


def _ordered_stats(feature: Feature, column: pd.Series) -> FeatureStats:
    values = column.to_numpy(dtype=float)
    present = ~np.isnan(values)
    missing_share = 1.0 - float(present.mean()) if values.size else 0.0
    values = values[present]
    std = float(values.std()) if values.size else 0.0
    mad = float(np.median(np.abs(values - np.median(values)))) if values.size else 0.0
    low = float(feature.min) if feature.min is not None else float(values.min())
    high = float(feature.max) if feature.max is not None else float(values.max())
    unit = next((u for u in (mad, std, high - low) if u > 0 and np.isfinite(u)), 1.0)
    decimals = 0 if feature.kind == "integer" else _decimals(values, unit)
    grid = np.quantile(values, _QUANTILE_LEVELS) if values.size else np.array([])
    grid = np.unique(np.round(grid, decimals))
    return FeatureStats(
        feature,
        mean=float(values.mean()) if values.size else 0.0,
        scale=std if std > 0 else unit,
        mad=unit,
        low=low,
        high=high,
        grid=grid,
        decimals=decimals,
        missing_share=missing_share,
    )


def _decimals(values: np.ndarray, unit: float) -> int:
    """Decimals for suggested values, so that they read like the data.

    The background's own precision when it has at most four decimals, else three
    significant digits of the feature's distance unit.
    """
    for d in range(5):
        if np.allclose(values, np.round(values, d), rtol=0.0, atol=1e-9):
            return d
    return max(int(2 - np.floor(np.log10(unit))), 0)


def _discrete_stats(feature: Feature, column: pd.Series) -> FeatureStats:
    present = column.notna().to_numpy()
    if feature.kind == "boolean":
        values = np.array([False, True], dtype=bool)
        observed = column[present].to_numpy(dtype=bool)
    else:
        values = np.array(list(feature.categories or ()), dtype=object)
        observed = column[present].astype(str).to_numpy(dtype=object)
    counts = np.array([np.count_nonzero(observed == v) for v in values], dtype=float)
    # Shares of all background rows (missing ones included), so a category's share is what
    # a background row has in common with the instance.
    total = float(len(column)) if len(column) else 0.0
    freqs = counts / total if counts.sum() > 0 else np.full(len(values), 1.0 / max(len(values), 1))
    missing_share = 1.0 - float(present.mean()) if len(column) else 0.0
    return FeatureStats(feature, values=values, freqs=freqs, missing_share=missing_share)


_cache: OrderedDict[tuple[Any, ...], tuple[FeatureStats, ...]] = OrderedDict()
_cache_lock = threading.Lock()


def background_stats(model: ModelLike) -> tuple[FeatureStats, ...]:
    """Per-feature statistics of ``model.background``, in schema order.

    Cached per model artifact and background frame (small LRU), since the
    background never changes for a loaded model.
    """
    key = (model.sha256, model.name, model.version, id(model.background), len(model.background))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    stats = tuple(
        _ordered_stats(f, model.background[f.name])
        if f.is_numeric
        else _discrete_stats(f, model.background[f.name])
        for f in model.schema.features
    )
    with _cache_lock:
        _cache[key] = stats
        while len(_cache) > _STATS_CACHE_SIZE:
            _cache.popitem(last=False)
    return stats


def native(value: Any, kind: str) -> Any:
    """A plain Python value of a feature of ``kind`` (no numpy scalars); None when missing."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if kind == "numeric":
        return float(value)
    if kind == "integer":
        return int(value)
    if kind == "boolean":
        return bool(value)
    return str(value)


def row_dicts(rows: pd.DataFrame, features: tuple[Feature, ...]) -> list[dict[str, Any]]:
    """Each row as a ``{feature: plain value}`` dict in schema order."""
    columns = [rows[f.name].tolist() for f in features]
    return [
        {f.name: native(col[i], f.kind) for f, col in zip(features, columns, strict=True)}
        for i in range(len(rows))
    ]


def resolve_seed(model: ModelLike, row: dict[str, Any], method: str, options: dict[str, Any]) -> int:
    """``options["seed"]`` if given, else a seed derived from model, row, method and options."""
    if options.get("seed") is not None:
        return int(options["seed"])
    rest = {k: v for k, v in options.items() if k != "seed"}
    return derive_seed(model.sha256, row, method, rest)


def make_frame(features: tuple[Feature, ...], columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A model-ready frame from per-feature arrays, in schema order and dtypes."""
    out: dict[str, np.ndarray] = {}
    for f in features:
        col = columns[f.name]
        if f.kind == "numeric" or (f.kind == "integer" and f.missing):
            out[f.name] = (
                np.rint(np.asarray(col, dtype=float))
                if f.kind == "integer"
                else np.asarray(col, dtype="float64")
            )
        elif f.kind == "integer":
            out[f.name] = np.rint(np.asarray(col, dtype=float)).astype("int64")
        elif f.kind == "boolean" and not f.missing:
            out[f.name] = np.asarray(col, dtype=bool)
        else:
            values = np.array(col, dtype=object)
            values[pd.isna(values)] = np.nan  # a missing value reaches the model as NaN
            out[f.name] = values
    return pd.DataFrame(out, copy=False)


def model_output(model: ModelLike, frame: pd.DataFrame) -> np.ndarray:
    """The model's output for ``frame`` as (n, k): probabilities, or values with k = 1.

    Scored in chunks of :data:`MAX_BATCH_ROWS` with the request's deadline checked before each, so
    a large neighbourhood stops within about one chunk's time of it.
    """
    parts = []
    for start in range(0, len(frame), MAX_BATCH_ROWS):
        check_deadline()
        chunk = frame if len(frame) <= MAX_BATCH_ROWS else frame.iloc[start : start + MAX_BATCH_ROWS]
        if model.task == "regression":
            parts.append(np.asarray(model.predict_value(chunk), dtype=float).reshape(-1, 1))
        else:
            parts.append(np.asarray(model.predict_proba(chunk), dtype=float))
    if not parts:
        return np.empty((0, max(len(model.class_names), 1)))
    return np.concatenate(parts)
