"""Bias audits on labelled data: which groups, what is counted, and the answer's shape.

An audit compares the model's decisions with the true labels, group by group, for each
sensitive feature (and, when asked, for their intersection)::

    rows (chunk by chunk) --predict--> (group labels, label is positive, prediction is positive)
        --> confusion counts per group (CountAccumulator; rows are not kept)
        --> fairlearn figures + bootstrap intervals per grouping (metrics.feature_figures)
        --> the answer, stored as a ``kind: "fairness"`` audit record (fairness.record)

The positive outcome is the model's favourable class, else its second class; a row's
prediction is the class the service would answer (the most probable one). Group labels come
from :func:`explain_service.fairness.groups.group_labels`. The answer extends the contract
of PRODUCT.md (Fairness)::

    {"id": record id, "model": {"name", "version", "sha256"}, "positive": class, "label": column,
     "data": {"sha256", "rows", "used", "rejected", "rejected_examples"},
     "bootstrap": {"resamples", "seed", "confidence"},
     "by_feature": {feature or "f1 & f2": {
         "groups": {group: {"count", "selection_rate", "true_positive_rate", "false_positive_rate"}},
         "demographic_parity_difference", "demographic_parity_ratio",
         "equal_opportunity_difference", "equalized_odds_difference",
         "intervals": {metric: {"low", "high"}}, "group_sizes": {group: count},
         "four_fifths_rule": {"threshold", "ratio", "flagged"}, "warnings": [...]}},
     "warnings": [...]}

Counts add up, so any chunking of the same rows gives the same answer, intervals included.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from explain_service.errors import ValidationFailed
from explain_service.fairness.groups import (
    JOIN,
    MISSING,
    Edges,
    above_label,
    below_label,
    bin_labels,
    check_edges,
    group_labels,
    intersection_name,
    value_label,
)
from explain_service.fairness.metrics import CONFIDENCE, GroupCounts, cell_index, feature_figures
from explain_service.registry.model import LoadedModel

DEFAULT_RESAMPLES = 1000
MAX_RESAMPLES = 10_000


@dataclass(frozen=True)
class AuditPlan:
    """What one audit computes: the groupings, the positive class and the bootstrap."""

    sensitive: dict[str, Edges]
    positive: str
    intersect: bool = False
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0

    @property
    def groupings(self) -> list[tuple[str, ...]]:
        """Each sensitive feature alone, then (when asked) all of them together."""
        single: list[tuple[str, ...]] = [(name,) for name in self.sensitive]
        if self.intersect and len(self.sensitive) > 1:
            single.append(tuple(self.sensitive))
        return single

    def request(self) -> dict[str, Any]:
        """The parameters that shaped the audit, for its record."""
        return {
            # A record's JSON has sorted keys: the list keeps the order that names intersections.
            "features": list(self.sensitive),
            "sensitive": {k: (list(v) if v is not None else None) for k, v in self.sensitive.items()},
            "positive": self.positive,
            "intersect": self.intersect,
            "resamples": self.resamples,
            "seed": self.seed,
        }


def positive_class(model: LoadedModel) -> str:
    """The favourable class, else the second class; only classifiers can be audited."""
    if not model.is_classifier:
        raise ValidationFailed({"model": ["A bias audit needs a classifier; this model is a regressor."]})
    return model.favorable or model.class_names[1]


def resolve_sensitive(
    model: LoadedModel,
    names: Sequence[str] | None,
    bins: Mapping[str, Any] | None = None,
    *,
    extra_columns: Sequence[str] | None = None,
    field_name: str = "sensitive",
) -> dict[str, Edges]:
    """The groupings of an audit: the features named (default: the model's sensitive ones).

    A model feature takes the edges given in ``bins``, else those of its registration, else
    (categorical, boolean, integer) one group per value; a numeric feature needs edges.
    ``extra_columns`` (columns of a file that are not model inputs; None when there is no
    file) may be named too and are grouped by value. Raises :class:`ValidationFailed` naming ``<field_name>.<i>`` or
    ``bins.<feature>``.
    """
    bins = dict(bins or {})
    registered = model.manifest.sensitive
    chosen = list(names) if names else list(registered)
    if not chosen:
        raise ValidationFailed(
            {field_name: ["Name at least one feature: this model registers no sensitive features."]}
        )
    errors: dict[str, list[str]] = {}
    out: dict[str, Edges] = {}
    known = set(model.schema.names)
    for i, name in enumerate(chosen):
        where = f"{field_name}.{i}"
        if name in out:
            errors[where] = [f"{name!r} is named twice."]
        elif name in known:
            feature = model.schema[name]
            edges = bins[name] if name in bins else registered.get(name)
            try:
                out[name] = check_edges(name, feature.kind, edges, None, None)
            except ValueError as exc:
                errors[f"bins.{name}" if name in bins else where] = [str(exc)]
        elif extra_columns is not None and name in extra_columns:
            if name in bins:
                errors[f"bins.{name}"] = ["Only model features take bin edges; other columns group by value."]
            out[name] = None
        else:
            errors[where] = [f"{name!r} is not a feature of the model" + _columns_hint(extra_columns)]
    for name in bins:
        if name not in chosen:
            errors[f"bins.{name}"] = [f"{name!r} is not among the sensitive features of this audit."]
    if errors:
        raise ValidationFailed(errors)
    return out


def _columns_hint(extra_columns: Sequence[str] | None) -> str:
    return " nor a column of the data." if extra_columns is not None else "."


def label_truth(values: Any, class_names: Sequence[str], positive: str) -> tuple[np.ndarray, np.ndarray]:
    """Which labels are class names, and which of those are the positive class.

    Labels are compared as text (``value_label``: ``1.0`` reads as ``"1"``), so a Parquet
    column of numbers matches class names that are numbers.
    """
    codes, uniques = pd.factorize(pd.Series(values), use_na_sentinel=True)
    text = [value_label(v) for v in uniques.tolist()]
    known = np.array([t in class_names for t in text] + [False])
    good = np.array([t == positive for t in text] + [False])
    return known[codes], good[codes]


@dataclass
class CountAccumulator:
    """Confusion counts per group of every grouping of a plan, added chunk by chunk."""

    plan: AuditPlan
    counts: dict[tuple[str, ...], dict[tuple[str, ...], np.ndarray]] = field(default_factory=dict)
    rows: int = 0

    def add(self, columns: Mapping[str, Any], y_true: np.ndarray, y_pred: np.ndarray) -> None:
        """Count one chunk: the sensitive columns' raw values, labels and predictions (booleans)."""
        if len(y_true) == 0:
            return
        self.rows += len(y_true)
        cells = cell_index(y_true, y_pred)
        coded = {}
        for name, edges in self.plan.sensitive.items():
            codes, uniques = pd.factorize(group_labels(columns[name], edges))
            coded[name] = (codes.astype(np.int64), list(uniques))
        for grouping in self.plan.groupings:
            key = np.zeros(len(cells), dtype=np.int64)
            sizes = []
            for name in grouping:
                codes, uniques = coded[name]
                key = key * len(uniques) + codes
                sizes.append(len(uniques))
            total = int(np.prod(sizes))
            table = np.bincount(key * 4 + cells, minlength=total * 4).reshape(total, 4)
            into = self.counts.setdefault(grouping, {})
            for flat in np.flatnonzero(table.sum(axis=1)).tolist():
                parts = np.unravel_index(flat, sizes)
                label = tuple(coded[name][1][int(p)] for name, p in zip(grouping, parts, strict=True))
                if label in into:
                    into[label] = into[label] + table[flat]
                else:
                    into[label] = table[flat].astype(np.int64)

    def groups(self, grouping: tuple[str, ...]) -> GroupCounts:
        """The counts of one grouping, groups in a stable order (bins in order, categories sorted)."""
        found = self.counts.get(grouping, {})
        keys = sorted(found, key=lambda label: self._order(grouping, label))
        labels = tuple(JOIN.join(k) for k in keys)
        counts = np.array([found[k] for k in keys], dtype=np.int64).reshape(len(keys), 4)
        return GroupCounts(labels, counts)

    def _order(self, grouping: tuple[str, ...], label: tuple[str, ...]) -> tuple[Any, ...]:
        return tuple(
            itertools.chain.from_iterable(
                _label_rank(self.plan.sensitive[name], part)
                for name, part in zip(grouping, label, strict=True)
            )
        )


def _label_rank(edges: Edges, label: str) -> tuple[int, str]:
    if label == MISSING:
        return (1 << 30, "")
    if edges is None:
        return (0, label)
    ordered = [below_label(edges), *bin_labels(edges), above_label(edges)]
    return (ordered.index(label), "")


def figures(acc: CountAccumulator) -> dict[str, Any]:
    """``by_feature`` of the answer, plus the audit-wide warnings."""
    plan = acc.plan
    by_feature: dict[str, Any] = {}
    warnings: list[str] = []
    for grouping in plan.groupings:
        name = intersection_name(grouping)
        result = feature_figures(acc.groups(grouping), resamples=plan.resamples, seed=plan.seed)
        by_feature[name] = result
        warnings += [f"{name}: {w}" for w in result["warnings"]]
        if result["four_fifths_rule"]["flagged"]:
            warnings.append(
                f"{name}: demographic parity ratio {result['demographic_parity_ratio']:.3f} is below "
                "0.8 (four-fifths rule)"
            )
    return {"by_feature": by_feature, "warnings": warnings}


def answer(
    model: LoadedModel, acc: CountAccumulator, label: str | None, data: dict[str, Any]
) -> dict[str, Any]:
    """The audit's answer without its record id (see the module docstring); ``label`` is the
    file's label column (None for labels sent in a request)."""
    found = figures(acc)
    plan = acc.plan
    return {
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
        "positive": plan.positive,
        "label": label,
        "data": data,
        "bootstrap": {"resamples": plan.resamples, "seed": plan.seed, "confidence": CONFIDENCE},
        "by_feature": found["by_feature"],
        "warnings": found["warnings"],
    }


def predicted_positive(model: LoadedModel, X: np.ndarray, positive: str) -> np.ndarray:
    """Whether the class the service would answer (the most probable) is the positive class."""
    proba = model.proba_matrix(X)
    return proba.argmax(axis=1) == model.class_names.index(positive)
