"""The transparency report of one model version: what it is, how it performs, how it is served and overseen.

:func:`build_report` assembles a JSON-ready dict from three kinds of source, and never reads every record:

* the registry: description, intended use, owner, the background sample (rows, ranges, category
  frequencies), features and constraints, classes, library versions and file hashes, the previous version;
* computations on the model: performance on a labelled set when one is given (:mod:`.performance`) and
  global importance (mean |SHAP| over the background, via ``importance``);
* the chain's derived tables (:class:`explain_service.audit.tally.Tally`, the trail index): decisions,
  explanation quality, live disparity, reviews, incidents, suspensions and the latest bias audit.

Its top-level keys, in reading order::

    format, generated_at, model, description, intended_use, owner, training_data, features, classes,
    provenance, performance, importance, bias_audit, disparity, explanation_quality, oversight, change,
    evidence

Which field follows which published model-card practice is in the README (Transparency reports).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Connection, func, select

from explain_service.audit.aggregates import kind_counts, latest_of_kind, quality_of
from explain_service.audit.suspensions import WHOLE_MODEL
from explain_service.fairness.evidence import evidence_map
from explain_service.fairness.monitor import DisparitySettings, disparity, favourable_class, series
from explain_service.registry.model import LoadedModel

FORMAT = "explain-service.report/1"
TOP_CATEGORIES = 20
WEEKS = 12  # the weekly selection-rate series covers this many ISO weeks, the current one included

Importance = Callable[[LoadedModel], dict[str, float]]
"""Mean |SHAP| per original feature over a reference set (the background)."""


def background_summary(model: LoadedModel) -> dict[str, Any]:
    """Rows, and per feature its range and mean (numbers) or category frequencies, of the background."""
    frame = model.background
    features: dict[str, Any] = {}
    for feature in model.schema.features:
        column = frame[feature.name]
        entry: dict[str, Any] = {"kind": feature.kind, "missing": int(column.isna().sum())}
        if feature.kind in ("numeric", "integer"):
            values = column.dropna().astype(float)
            entry.update(
                min=float(values.min()),
                max=float(values.max()),
                mean=float(values.mean()),
                std=float(values.std(ddof=0)),
            )
        else:
            counts = column.astype(str).value_counts(dropna=True)
            total = int(counts.sum())
            entry["frequencies"] = {
                str(k): {"count": int(v), "share": v / total} for k, v in counts.head(TOP_CATEGORIES).items()
            }
            entry["other_categories"] = max(0, len(counts) - TOP_CATEGORIES)
        features[feature.name] = entry
    return {
        "source": "the background sample stored with the model (at most 1,000 rows of its training data)",
        "rows": len(frame),
        "features": features,
    }


def feature_table(model: LoadedModel) -> list[dict[str, Any]]:
    """Each feature with its kind, range or categories, constraint, and whether it is sensitive or personal."""
    manifest = model.manifest
    out = []
    for feature in model.schema.features:
        entry = feature.to_dict()
        constraint = model.schema.constraints.get(feature.name)
        entry["constraint"] = constraint.to_dict() if constraint is not None else {"mutable": True}
        if feature.name in manifest.sensitive:
            edges = manifest.sensitive[feature.name]
            entry["sensitive"] = {"bins": list(edges) if edges is not None else None}
        entry["personal"] = feature.name in manifest.personal
        out.append(entry)
    return out


def schema_change(previous: LoadedModel, current: LoadedModel) -> dict[str, Any]:
    """Features added, removed or changed (kind, categories) and classes changed between two versions."""
    before = {f.name: f for f in previous.schema.features}
    after = {f.name: f for f in current.schema.features}
    changed = {}
    for name in sorted(set(before) & set(after)):
        old, new = before[name], after[name]
        diff: dict[str, Any] = {}
        if old.kind != new.kind:
            diff["kind"] = {"from": old.kind, "to": new.kind}
        if old.categories != new.categories:
            added = sorted(set(new.categories or ()) - set(old.categories or ()))
            removed = sorted(set(old.categories or ()) - set(new.categories or ()))
            diff["categories"] = {"added": added, "removed": removed}
        if diff:
            changed[name] = diff
    return {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": changed,
        "classes": None
        if previous.class_names == current.class_names
        else {"from": list(previous.class_names), "to": list(current.class_names)},
    }


def importance_shift(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, Any]:
    """Per feature, mean |SHAP| now minus before; and the rank each had."""
    rank_before = {f: i + 1 for i, f in enumerate(sorted(before, key=lambda f: -before[f]))}
    rank_after = {f: i + 1 for i, f in enumerate(sorted(after, key=lambda f: -after[f]))}
    return {
        f: {
            "before": before.get(f),
            "after": after.get(f),
            "difference": (after[f] - before[f]) if f in before and f in after else None,
            "rank_before": rank_before.get(f),
            "rank_after": rank_after.get(f),
        }
        for f in sorted(set(before) | set(after))
    }


def explanation_quality(quality: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Quality over the served answers, from the bucket counts (:mod:`explain_service.audit.aggregates`)."""

    def n(metric: str, bucket: str | None = None) -> int:
        found = quality.get(metric, {})
        return sum(v["n"] for b, v in found.items() if bucket is None or b == bucket)

    shap_count, lime_count, cf_count = n("shap"), n("lime_r2"), n("counterfactual")
    residuals = [v["vmax"] for v in quality.get("shap", {}).values() if v["vmax"] is not None]
    low_lime = sum(v["n"] for b, v in quality.get("lime_r2", {}).items() if b in ("<0", *_tenths(0, 5)))
    return {
        "explanations": n("decision"),
        "shap": {
            "count": shap_count,
            "over_additivity_bar": n("shap", "over"),
            "max_abs_additivity_residual": max(residuals) if residuals else None,
        },
        "lime": {
            "count": lime_count,
            "r2_histogram": {
                b: quality.get("lime_r2", {}).get(b, {"n": 0})["n"] for b in ("<0", *_tenths(0, 10))
            },
            "r2_below_0_5": low_lime,
        },
        "counterfactual": {
            "count": cf_count,
            "found_rate": n("counterfactual", "found") / cf_count if cf_count else None,
            "budget_ran_out_rate": n("cf_budget", "ran_out") / cf_count if cf_count else None,
        },
    }


def _tenths(start: int, stop: int) -> list[str]:
    return [f"[{t / 10:.1f}, {(t + 1) / 10:.1f}{']' if t == 9 else ')'}" for t in range(start, stop)]


def oversight(
    conn: Connection, model: LoadedModel, decisions: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Decisions by label and by review status, review events, incidents and suspensions of the version."""
    from explain_service.audit.index_tables import explanations

    e = explanations.c
    where = (e.model_name == model.name, e.model_version == model.version)
    statuses = {
        str(s): int(c)
        for s, c in conn.execute(select(e.status, func.count()).where(*where).group_by(e.status))
    }
    required = int(conn.execute(select(func.count()).where(*where, e.review_required)).scalar_one())
    kinds = kind_counts(conn, model.name, model.version)
    reviews = kinds.get("review", {})
    # A suspension names its version, or "*" for the whole model (explain_service.audit.suspensions).
    whole = kind_counts(conn, model.name, WHOLE_MODEL).get("suspension", {})
    suspended = kinds.get("suspension", {}).get("suspend", 0) + whole.get("suspend", 0)
    return {
        "decisions": {label: v["n"] for label, v in decisions.items()},
        "status": statuses,
        "review_required": required,
        "reviews": sum(reviews.values()),
        "review_actions": reviews,
        "overrides": reviews.get("override", 0),
        "escalations": reviews.get("escalate", 0),
        "incidents": sum(kinds.get("incident", {}).values()),
        "suspensions": suspended,
        "bias_audits": sum(kinds.get("fairness", {}).values()),
    }


def build_report(
    model: LoadedModel,
    conn: Connection,
    *,
    previous: LoadedModel | None = None,
    importance: Importance | None = None,
    performance: dict[str, Any] | None = None,
    audit: Any = None,
    disparity_settings: DisparitySettings = DisparitySettings(),
    chain: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The transparency report of ``model`` (see the module docstring).

    ``conn`` reads the derived tables (caught up by the caller); ``audit`` (the store) reads the latest
    bias audit record; ``chain`` is ``{"records", "head_hash"}`` of the whole chain for the evidence map.
    """
    manifest = model.manifest
    quality = quality_of(conn, model.name, model.version)
    current_importance = importance(model) if importance is not None else None
    change = None
    if previous is not None:
        change = {"previous_version": previous.version, "schema": schema_change(previous, model)}
        if importance is not None and current_importance is not None:
            change["importance_shift"] = importance_shift(importance(previous), current_importance)
    report: dict[str, Any] = {
        "format": FORMAT,
        "generated_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "model": {
            "name": model.name,
            "version": model.version,
            "sha256": model.sha256,
            "task": model.task,
            "estimator": manifest.estimator.cls,
            "registered_at": manifest.created_at,
        },
        "description": manifest.description,
        "intended_use": manifest.intended_use,
        "owner": manifest.owner,
        "training_data": background_summary(model),
        "features": feature_table(model),
        "classes": {
            "names": list(model.class_names),
            "favourable": manifest.favorable,
            "positive": favourable_class(model.class_names, manifest.favorable),
        },
        "provenance": {
            "sha256": model.sha256,
            "files": dict(manifest.files),
            "libraries": dict(manifest.libraries),
        },
        "performance": performance,
        "importance": None
        if current_importance is None
        else {
            "reference": "background",
            "rows": len(model.background),
            "mean_abs_shap": dict(sorted(current_importance.items(), key=lambda kv: -kv[1])),
        },
        "bias_audit": _bias_audit(conn, audit, model),
        "disparity": {
            **disparity(conn, model.name, model.version, disparity_settings),
            "weekly": series(conn, model.name, model.version, period="week", since=_weeks_ago(WEEKS)),
        },
        "explanation_quality": explanation_quality(quality),
        "oversight": oversight(conn, model, quality.get("decision", {})),
        "change": change,
    }
    report["evidence"] = evidence_map(report, chain or {})
    return report


def _bias_audit(conn: Connection, audit: Any, model: LoadedModel) -> dict[str, Any] | None:
    """The newest bias audit of the version: its record id, time, data hash and headline figures."""
    found = latest_of_kind(conn, "fairness", model.name, model.version)
    if found is None or audit is None:
        return None
    record = audit.get(found[1])
    if record is None:
        return None
    body = record.body
    figures = body.get("figures") or body.get("result") or body
    by_feature = {}
    for feature, f in (figures.get("by_feature") or {}).items():
        by_feature[feature] = {
            k: f.get(k)
            for k in (
                "demographic_parity_difference",
                "demographic_parity_ratio",
                "equal_opportunity_difference",
                "equalized_odds_difference",
            )
        }
        rule = f.get("four_fifths_rule") or {}
        by_feature[feature]["four_fifths_flagged"] = rule.get("flagged")
        by_feature[feature]["group_sizes"] = f.get("group_sizes")
    data = figures.get("data") or body.get("data") or {}
    return {
        "id": record.id,
        "seq": record.seq,
        "created_at": record.created_at.isoformat(),
        "data_sha256": data.get("sha256"),
        "rows": data.get("used", data.get("rows")),
        "positive": figures.get("positive"),
        "by_feature": by_feature,
    }


def _weeks_ago(weeks: int) -> date:
    """The Monday ``weeks - 1`` weeks before this week's (UTC)."""
    today = datetime.now(UTC).date()
    return today - timedelta(days=today.weekday() + 7 * (weeks - 1))


def mean_abs(values: np.ndarray, names: list[str]) -> dict[str, float]:
    """Mean |value| per column, by name."""
    return {n: float(v) for n, v in zip(names, np.abs(values).mean(axis=0), strict=True)}
