"""Sensitive groups: the one mapping from a sensitive feature's values to group labels.

A model names its sensitive features at registration
(``register_model(..., sensitive={"sex": None, "age": [0, 25, 40, 60, 200]})``):
``None`` groups a categorical or boolean feature by its value, a list of bin edges
groups a numeric one by interval. Every consumer (bias audits, global explanations by
group, live disparity monitoring, reports) calls :func:`group_labels`, so one value has
one label everywhere and labels are stable strings that can be compared across runs:

* categories and booleans: the value as text (``"female"``, ``"True"``);
* a value in ``[25, 40)``: ``"[25, 40)"``; bins are closed on the left, and the last bin
  is closed on both sides (``"[60, 200]"``), so edges may end at the observed maximum;
* values outside the edges (rows beyond the registration's range): ``"(-inf, 0)"`` and
  ``"(200, inf)"``;
* a missing value: ``"missing"``.

Intersections (``sex & age``) join the labels of each part with ``" & "``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

MISSING = "missing"
JOIN = " & "

type Edges = tuple[float, ...] | None


def format_edge(value: float) -> str:
    """An edge as text: integral values without a decimal point (``25``, ``0.5``, ``1e+20``)."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def value_label(value: Any) -> str:
    """The label of one value of a feature grouped by value (``3.0`` and ``3`` are both ``"3"``)."""
    if isinstance(value, float | np.floating) and not isinstance(value, bool):
        return format_edge(float(value))
    return str(value)


def bin_labels(edges: Sequence[float]) -> list[str]:
    """The labels of the bins between ``edges``, in order (without the out-of-range ones)."""
    text = [format_edge(e) for e in edges]
    labels = [f"[{lo}, {hi})" for lo, hi in itertools.pairwise(text[:-1])]
    labels.append(f"[{text[-2]}, {text[-1]}]")
    return labels


def below_label(edges: Sequence[float]) -> str:
    """The label of values below the first edge."""
    return f"(-inf, {format_edge(edges[0])})"


def above_label(edges: Sequence[float]) -> str:
    """The label of values above the last edge."""
    return f"({format_edge(edges[-1])}, inf)"


def group_labels(values: Any, edges: Sequence[float] | None) -> np.ndarray:
    """The group label of each value (an object array of strings).

    Parameters
    ----------
    values
        A column of one sensitive feature (array-like).
    edges
        Strictly increasing bin edges for a numeric feature, or ``None`` to group by value.
    """
    column = pd.Series(values)
    if edges is None:
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
        names = np.array([value_label(v) for v in uniques.tolist()] + [MISSING], dtype=object)
        return names[codes]  # the sentinel -1 picks MISSING
    numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bounds = np.asarray(edges, dtype=np.float64)
    names = np.array([below_label(edges), *bin_labels(edges), above_label(edges), MISSING], dtype=object)
    # searchsorted(side="right") puts a value equal to an edge in the bin that starts there.
    index = np.searchsorted(bounds, numbers, side="right")
    index[numbers == bounds[-1]] = len(bounds) - 1  # the last bin is closed on the right
    index[np.isnan(numbers)] = len(bounds) + 1
    return names[index]


def intersection_labels(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Labels of the intersection of several features' groups (``"female & [25, 40)"``)."""
    if len(columns) == 1:
        return np.asarray(columns[0], dtype=object)
    out = np.asarray(columns[0], dtype=object).astype(str)
    for column in columns[1:]:
        out = np.char.add(np.char.add(out, JOIN), np.asarray(column, dtype=object).astype(str))
    return out.astype(object)


def intersection_name(features: Sequence[str]) -> str:
    """The key of an intersection of features (``"sex & age"``)."""
    return JOIN.join(features)


def check_edges(feature: str, kind: str, edges: Any, low: float | None, high: float | None) -> Edges:
    """Validate the grouping of one sensitive feature; raise ``ValueError`` naming it.

    Numeric features need at least two finite, strictly increasing edges from at or below
    the observed minimum ``low`` to at or above the observed maximum ``high``; integer
    features take edges or ``None`` (one group per value); categorical and boolean ones take
    ``None``. Returns the edges as a tuple of numbers (integral ones as ``int``).
    """
    where = f"sensitive {feature!r}"
    if edges is None:
        if kind == "numeric":
            raise ValueError(f"{where} is numeric: give bin edges, e.g. [0, 25, 40, 60, 200]")
        return None
    if kind not in ("numeric", "integer"):
        raise ValueError(f"{where} is {kind}: give None (one group per value), not bin edges")
    if isinstance(edges, str | bytes) or not isinstance(edges, Sequence):
        raise ValueError(f"{where}: bin edges must be a list of numbers")
    if len(edges) < 2:
        raise ValueError(f"{where}: give at least two bin edges")
    numbers: list[float] = []
    for e in edges:
        if isinstance(e, bool) or not isinstance(e, int | float | np.integer | np.floating):
            raise ValueError(f"{where}: bin edge {e!r} is not a number")
        if not math.isfinite(float(e)):
            raise ValueError(f"{where}: bin edge {e!r} is not finite")
        numbers.append(float(e))
    if any(b <= a for a, b in itertools.pairwise(numbers)):
        raise ValueError(f"{where}: bin edges must be strictly increasing, got {list(edges)}")
    if low is not None and numbers[0] > float(low):
        raise ValueError(
            f"{where}: the first bin edge {format_edge(numbers[0])} is above the observed minimum {low}"
        )
    if high is not None and numbers[-1] < float(high):
        raise ValueError(
            f"{where}: the last bin edge {format_edge(numbers[-1])} is below the observed maximum {high}"
        )
    return tuple(int(n) if n.is_integer() and abs(n) < 2**53 else n for n in numbers)
