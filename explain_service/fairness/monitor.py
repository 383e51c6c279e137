"""Disparity monitoring on live decisions: selection rates per sensitive group, from the served answers.

No labels are needed: a decision is *favourable* when the predicted label is the model's favourable class
(else its second class, as in bias audits). A projection of the chain (:class:`DisparityCounts`, fed by
:class:`explain_service.audit.tally.Tally`) counts, per model version, UTC day, sensitive feature and group
(:func:`explain_service.fairness.groups.group_labels`, the manifest's grouping), the decisions and the
favourable ones::

    disparity_counts
    model_name │ model_version │ day │ feature │ grp │ decisions │ favourable      (key: the first five)

Every figure is a ``GROUP BY`` over that table, never a read of the records:

* the selection rate of a group over a window: favourable / decisions;
* the demographic parity ratio of a feature over the sliding window (the last ``window_days`` days,
  today included): the lowest selection rate over the highest, among the groups with at least
  ``min_group`` decisions in the window (fairlearn's definition over those groups; None with fewer
  than two such groups or no favourable decision at all);
* the alert: a feature's ratio below ``threshold`` (0.8 by default: the four-fifths rule).

Settings (environment): ``EXPLAIN_DISPARITY_THRESHOLD`` (0.8), ``EXPLAIN_DISPARITY_WINDOW_DAYS`` (30),
``EXPLAIN_DISPARITY_MIN_GROUP`` (30). Records of a model version whose manifest cannot be read, of a
regression model or of a model without sensitive features are not counted.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, MetaData, String, Table, func, select

from explain_service.audit.chain import StoredRecord
from explain_service.audit.tally import add_counts
from explain_service.fairness.groups import group_labels

metadata = MetaData()
disparity_counts = Table(
    "disparity_counts",
    metadata,
    Column("model_name", String(64), primary_key=True),
    Column("model_version", String(32), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("feature", String(128), primary_key=True),
    Column("grp", String(256), primary_key=True),
    Column("decisions", BigInteger, nullable=False),
    Column("favourable", BigInteger, nullable=False),
)


@dataclass(frozen=True)
class Monitored:
    """What monitoring needs of a model version: its sensitive features' grouping and favourable class."""

    sensitive: dict[str, tuple[float, ...] | None]
    favourable: str


@dataclass(frozen=True)
class DisparitySettings:
    """The alert's threshold, the sliding window and the smallest group compared."""

    threshold: float = 0.8
    window_days: int = 30
    min_group: int = 30


Lookup = Callable[[str, str], Monitored | None]


def favourable_class(class_names: Sequence[str], favorable: str | None) -> str | None:
    """The favourable class: the registered one, else the second class (None for regression)."""
    if favorable is not None:
        return favorable
    return class_names[1] if len(class_names) >= 2 else None


def manifest_lookup(models_dir: str | Path) -> Lookup:
    """Read each version's manifest once (a registered version never changes)."""
    from explain_service.errors import IntegrityError
    from explain_service.registry.loading import read_manifest

    @functools.lru_cache(maxsize=1024)
    def lookup(name: str, version: str) -> Monitored | None:
        try:
            manifest = read_manifest(Path(models_dir) / name / version)
        except IntegrityError:
            return None
        favourable = favourable_class(manifest.class_names, manifest.favorable)
        if manifest.task != "classification" or favourable is None or not manifest.sensitive:
            return None
        return Monitored(dict(manifest.sensitive), favourable)

    return lookup


class DisparityCounts:
    """The projection counting decisions per model version, day, sensitive feature and group."""

    name = "disparity"
    tables = (disparity_counts,)

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup

    def apply(self, conn: Connection, batch: Sequence[StoredRecord]) -> None:
        """Add the batch's explanation records to the counts (one upsert per key)."""
        # Group the batch by model version, so each feature's values are labelled in one vectorised call.
        decided: dict[tuple[str, str], list[tuple[str, int, dict[str, Any]]]] = defaultdict(list)
        for record in batch:
            body = record.body
            if body.get("kind") != "explanation":
                continue
            monitored = self.lookup(record.model_name, record.model_version)
            label = (body.get("explanation", {}).get("prediction") or {}).get("label")
            if monitored is None or label is None:
                continue
            day = record.created_at.astimezone(UTC).date().isoformat()
            favourable = int(label == monitored.favourable)
            decided[(record.model_name, record.model_version)].append(
                (day, favourable, body.get("instance", {}))
            )
        totals: dict[tuple[str, str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        for (name, version), found in decided.items():
            monitored = self.lookup(name, version)
            assert monitored is not None
            for feature, edges in monitored.sensitive.items():
                labels = group_labels([instance.get(feature) for _, _, instance in found], edges)
                for (day, favourable, _), group in zip(found, labels, strict=True):
                    counts = totals[(name, version, day, feature, str(group))]
                    counts[0] += 1
                    counts[1] += favourable
        if not totals:
            return
        rows = [
            dict(zip(("model_name", "model_version", "day", "feature", "grp"), key, strict=True))
            | {"decisions": n, "favourable": f}
            for key, (n, f) in totals.items()
        ]
        add_counts(conn, disparity_counts, rows, ["decisions", "favourable"])


def _where(name: str, version: str, start: date | None = None, end: date | None = None) -> list[Any]:
    c = disparity_counts.c
    clauses = [c.model_name == name, c.model_version == version]
    if start is not None:
        clauses.append(c.day >= start.isoformat())
    if end is not None:
        clauses.append(c.day <= end.isoformat())
    return clauses


def disparity(
    conn: Connection,
    name: str,
    version: str,
    settings: DisparitySettings = DisparitySettings(),
    *,
    today: date | None = None,
) -> dict[str, Any]:
    """Selection rates and parity ratios of a model version over the sliding window ending ``today``."""
    end = today or datetime.now(UTC).date()
    start = end - timedelta(days=settings.window_days - 1)
    c = disparity_counts.c
    query = (
        select(c.feature, c.grp, func.sum(c.decisions), func.sum(c.favourable))
        .where(*_where(name, version, start, end))
        .group_by(c.feature, c.grp)
        .order_by(c.feature, c.grp)
    )
    groups: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for feature, group, decisions, favourable in conn.execute(query):
        decisions, favourable = int(decisions), int(favourable)
        groups[feature][group] = {
            "decisions": decisions,
            "favourable": favourable,
            "selection_rate": favourable / decisions if decisions else None,
        }
    by_feature = {feature: _parity(found, settings) for feature, found in groups.items()}
    return {
        "window": {"start": start.isoformat(), "end": end.isoformat(), "days": settings.window_days},
        "threshold": settings.threshold,
        "min_group": settings.min_group,
        "alert": any(f["alert"] for f in by_feature.values()),
        "by_feature": by_feature,
    }


def _parity(groups: dict[str, dict[str, Any]], settings: DisparitySettings) -> dict[str, Any]:
    compared = {g: v["selection_rate"] for g, v in groups.items() if v["decisions"] >= settings.min_group}
    ratio = difference = None
    if len(compared) >= 2:
        high, low = max(compared.values()), min(compared.values())
        difference = high - low
        ratio = low / high if high > 0 else None
    return {
        "groups": groups,
        "compared_groups": sorted(compared),
        "demographic_parity_ratio": ratio,
        "demographic_parity_difference": difference,
        "alert": ratio is not None and ratio < settings.threshold,
    }


def series(
    conn: Connection, name: str, version: str, *, period: str = "day", since: date | None = None
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Selection rate per feature, group and day (or ISO week, ``period="week"``, keyed by its Monday)."""
    if period not in ("day", "week"):
        raise ValueError("period is 'day' or 'week'")
    c = disparity_counts.c
    query = (
        select(c.feature, c.grp, c.day, c.decisions, c.favourable)
        .where(*_where(name, version, since))
        .order_by(c.feature, c.grp, c.day)
    )
    sums: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for feature, group, day, decisions, favourable in conn.execute(query):
        when = date.fromisoformat(day)
        start = when if period == "day" else when - timedelta(days=when.weekday())
        counts = sums[(feature, group, start.isoformat())]
        counts[0] += int(decisions)
        counts[1] += int(favourable)
    out: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for (feature, group, label), (decisions, favourable) in sorted(sums.items()):
        out[feature][group].append(
            {"period": label, "decisions": decisions, "selection_rate": favourable / decisions}
        )
    return {f: dict(g) for f, g in out.items()}


def monitored_versions(conn: Connection) -> list[tuple[str, str]]:
    """The (model, version) pairs that have counts."""
    c = disparity_counts.c
    query = select(c.model_name, c.model_version).distinct().order_by(c.model_name, c.model_version)
    return [(str(n), str(v)) for n, v in conn.execute(query)]
