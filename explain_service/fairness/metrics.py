"""Fairness figures of one grouping from its confusion counts: fairlearn's numbers, bootstrap intervals.

A bias audit never keeps its rows. Per group it keeps four counts, the cells of the
confusion matrix of the positive outcome (:data:`CELLS`: true negatives, false positives,
false negatives, true positives), added up chunk by chunk. Everything the audit reports
follows from those counts:

* the figures themselves come from fairlearn (``MetricFrame`` with ``selection_rate``,
  ``true_positive_rate`` and ``false_positive_rate``; ``demographic_parity_difference``,
  ``demographic_parity_ratio``, ``equal_opportunity_difference`` and
  ``equalized_odds_difference``), given one row per non-empty cell weighted by its count,
  which is the same sum as one row per input row;
* the 95% intervals come from a nonparametric bootstrap: resampling ``n`` rows with
  replacement is drawing the cells' counts from a multinomial with the observed
  proportions, so a resample costs a draw of a few numbers, not a pass over the rows,
  and the interval does not depend on how the input was chunked. The resampled figures
  use :func:`rates`, which follows fairlearn's definitions (a rate with an empty
  denominator is 0, the ratio of an all-zero selection is undefined); the tests check
  both against fairlearn. (``MetricFrame(n_boot=...)`` resamples rows, so it would need
  every row kept, and weighted cells resampled as rows would be a different bootstrap.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

CELLS = ("tn", "fp", "fn", "tp")  # index = 2 * label_is_positive + prediction_is_positive
METRICS = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equal_opportunity_difference",
    "equalized_odds_difference",
)
FOUR_FIFTHS = 0.8
SMALL_GROUP = 30
CONFIDENCE = 0.95


@dataclass(frozen=True)
class GroupCounts:
    """The confusion counts of each group of one grouping: ``counts[g] = [tn, fp, fn, tp]``."""

    labels: tuple[str, ...]
    counts: np.ndarray  # (groups, 4) int64

    @property
    def sizes(self) -> np.ndarray:
        return self.counts.sum(axis=1)


def cell_index(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """The confusion cell of each row (see :data:`CELLS`) from boolean label and prediction."""
    return 2 * np.asarray(y_true, dtype=np.int64) + np.asarray(y_pred, dtype=np.int64)


def fairlearn_figures(groups: GroupCounts) -> dict[str, Any]:
    """Per-group rates and the four disparity metrics, computed by fairlearn on the weighted cells."""
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        demographic_parity_ratio,
        equal_opportunity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    g, cell = np.nonzero(groups.counts)
    weight = groups.counts[g, cell].astype(np.float64)
    y_true, y_pred = cell // 2, cell % 2
    sensitive = np.asarray(groups.labels, dtype=object)[g]
    weighted = {"sample_weight": weight}
    frame = MetricFrame(
        metrics={
            "selection_rate": selection_rate,
            "true_positive_rate": true_positive_rate,
            "false_positive_rate": false_positive_rate,
        },
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=sensitive,
        sample_params={
            "selection_rate": weighted,
            "true_positive_rate": weighted,
            "false_positive_rate": weighted,
        },
    )
    by_group = frame.by_group
    sizes = groups.sizes
    out: dict[str, Any] = {
        "groups": {
            label: {
                "count": int(sizes[i]),
                "selection_rate": _number(by_group.loc[label, "selection_rate"]),
                "true_positive_rate": _number(by_group.loc[label, "true_positive_rate"]),
                "false_positive_rate": _number(by_group.loc[label, "false_positive_rate"]),
            }
            for i, label in enumerate(groups.labels)
            if sizes[i] > 0
        }
    }
    common = {"sensitive_features": sensitive, "sample_weight": weight}
    out["demographic_parity_difference"] = _number(demographic_parity_difference(y_true, y_pred, **common))
    out["demographic_parity_ratio"] = _number(demographic_parity_ratio(y_true, y_pred, **common))
    out["equal_opportunity_difference"] = _number(equal_opportunity_difference(y_true, y_pred, **common))
    out["equalized_odds_difference"] = _number(equalized_odds_difference(y_true, y_pred, **common))
    return out


def rates(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Selection, true and false positive rates of ``counts[..., group, cell]``, fairlearn's way.

    A group without rows gets NaN everywhere (it is no group in that resample); a rate whose
    denominator is empty in a group that has rows is 0, as fairlearn reports it.
    """
    counts = counts.astype(np.float64)
    tn, fp, fn, tp = (counts[..., k] for k in range(4))
    n = tn + fp + fn + tp
    with np.errstate(invalid="ignore", divide="ignore"):
        selection = np.where(n > 0, (fp + tp) / n, np.nan)
        tpr = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        fpr = np.where(fp + tn > 0, fp / (fp + tn), 0.0)
    empty = n == 0
    return {
        "selection_rate": selection,
        "true_positive_rate": np.where(empty, np.nan, tpr),
        "false_positive_rate": np.where(empty, np.nan, fpr),
    }


def disparities(counts: np.ndarray) -> dict[str, np.ndarray]:
    """The four disparity metrics over the group axis (the second to last) of ``counts``."""
    r = rates(counts)

    def spread(values: np.ndarray) -> np.ndarray:
        return np.nanmax(values, axis=-1) - np.nanmin(values, axis=-1)

    selection = r["selection_rate"]
    high = np.nanmax(selection, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(high > 0, np.nanmin(selection, axis=-1) / high, np.nan)
    tpr_gap = spread(r["true_positive_rate"])
    return {
        "demographic_parity_difference": spread(selection),
        "demographic_parity_ratio": ratio,
        "equal_opportunity_difference": tpr_gap,
        "equalized_odds_difference": np.maximum(tpr_gap, spread(r["false_positive_rate"])),
    }


def bootstrap_intervals(groups: GroupCounts, resamples: int, seed: int) -> dict[str, dict[str, float | None]]:
    """Percentile 95% intervals of the four metrics over ``resamples`` multinomial resamples."""
    flat = groups.counts.reshape(-1)
    n = int(flat.sum())
    if n == 0 or resamples <= 0:
        return {name: {"low": None, "high": None} for name in METRICS}
    rng = np.random.default_rng(seed)
    drawn = rng.multinomial(n, flat / n, size=resamples).reshape(resamples, *groups.counts.shape)
    tail = (1 - CONFIDENCE) / 2 * 100
    out: dict[str, dict[str, float | None]] = {}
    with np.errstate(invalid="ignore"):
        for name, values in disparities(drawn).items():
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                out[name] = {"low": None, "high": None}
                continue
            low, high = np.percentile(finite, [tail, 100 - tail])
            out[name] = {"low": float(low), "high": float(high)}
    return out


def feature_figures(groups: GroupCounts, *, resamples: int, seed: int) -> dict[str, Any]:
    """Everything the audit reports for one grouping (see :mod:`explain_service.fairness.audit`)."""
    out = fairlearn_figures(groups)
    out["group_sizes"] = {label: stats["count"] for label, stats in out["groups"].items()}
    out["intervals"] = bootstrap_intervals(groups, resamples, seed)
    ratio = out["demographic_parity_ratio"]
    out["four_fifths_rule"] = {
        "threshold": FOUR_FIFTHS,
        "ratio": ratio,
        "flagged": ratio is not None and ratio < FOUR_FIFTHS,
    }
    out["warnings"] = [
        f"group {label!r} has {n} rows (fewer than {SMALL_GROUP}): its rates are unreliable"
        for label, n in out["group_sizes"].items()
        if n < SMALL_GROUP
    ]
    return out


def _number(value: Any) -> float | None:
    """A float for JSON; None for NaN (an undefined ratio)."""
    value = float(value)
    return None if math.isnan(value) else value
