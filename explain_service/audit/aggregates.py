"""Aggregates of the chain for reports: explanation quality per model version, and every other record kind.

Two projections fed by :class:`.tally.Tally` (derived, rebuildable; never evidence)::

    quality_counts   model_name │ model_version │ metric │ bucket │ n │ vmax     (key: the first four)
    record_kinds     seq │ id │ kind │ detail │ model_name │ model_version │ created_at

``quality_counts`` holds, per model version, how many explanations fall in each bucket of each metric
(``vmax``: the largest value seen in the bucket, where one is measured):

    decision       the predicted label (``value`` for a regressor)
    shap           ``within`` / ``over`` the additivity bar (:func:`explain_service.quality.additivity_exceeded`);
                   vmax = the largest |additivity_residual|
    lime_r2        the local R² in tenths: ``<0``, ``[0.0, 0.1)`` ... ``[0.9, 1.0]``
    counterfactual ``found`` (at least one valid counterfactual) / ``none``; vmax unused
    cf_budget      ``ran_out`` (the search's time budget cut it short) / ``completed``

``record_kinds`` lists every record that is not an explanation (reviews, incidents, bias audits,
suspensions, key changes...) with one ``detail`` word (a review's action, an incident's severity, an
access or suspension event), so their counts per model version are one indexed ``GROUP BY``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
)

from explain_service.audit.chain import StoredRecord, utc_text
from explain_service.audit.tally import add_counts
from explain_service.metrics import BUDGET_REASON
from explain_service.quality import additivity_exceeded

metadata = MetaData()
quality_counts = Table(
    "quality_counts",
    metadata,
    Column("model_name", String(64), primary_key=True),
    Column("model_version", String(32), primary_key=True),
    Column("metric", String(32), primary_key=True),
    Column("bucket", String(64), primary_key=True),
    Column("n", BigInteger, nullable=False),
    Column("vmax", Float, nullable=True),
)
record_kinds = Table(
    "record_kinds",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("id", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("detail", String(64), nullable=True),
    Column("model_name", String, nullable=False),
    Column("model_version", String, nullable=False),
    Column("created_at", String(32), nullable=False),
    Index("ix_record_kinds_model_kind", "model_name", "model_version", "kind", "seq"),
)

DETAIL_KEYS = ("action", "severity", "event")


def lime_bucket(score: float) -> str:
    """The tenth a LIME R² falls in (``[0.9, 1.0]`` closed on the right; below zero, ``<0``)."""
    if score < 0:
        return "<0"
    tenth = min(int(score * 10), 9)
    return f"[{tenth / 10:.1f}, {(tenth + 1) / 10:.1f}{']' if tenth == 9 else ')'}"


def explanation_buckets(explanation: dict[str, Any]) -> list[tuple[str, str, float | None]]:
    """``(metric, bucket, value)`` of one explanation, for :data:`quality_counts`."""
    prediction = explanation.get("prediction") or {}
    out: list[tuple[str, str, float | None]] = [("decision", str(prediction.get("label", "value")), None)]
    shap = explanation.get("shap")
    if isinstance(shap, dict) and isinstance(shap.get("additivity_residual"), int | float):
        residual = abs(float(shap["additivity_residual"]))
        out.append(("shap", "over" if additivity_exceeded(shap) else "within", residual))
    lime = explanation.get("lime")
    if isinstance(lime, dict) and isinstance(lime.get("score"), int | float) and math.isfinite(lime["score"]):
        out.append(("lime_r2", lime_bucket(float(lime["score"])), float(lime["score"])))
    cf = explanation.get("counterfactual")
    if isinstance(cf, dict):
        out.append(("counterfactual", "found" if cf.get("counterfactuals") else "none", None))
        ran_out = BUDGET_REASON in str(cf.get("message") or "")
        out.append(("cf_budget", "ran_out" if ran_out else "completed", None))
    return out


class QualityCounts:
    """The projection of explanation quality per model version."""

    name = "quality"
    tables = (quality_counts,)

    def apply(self, conn: Connection, batch: Sequence[StoredRecord]) -> None:
        """Add the batch's explanations to the bucket counts (one upsert per key)."""
        totals: dict[tuple[str, str, str, str], list[Any]] = defaultdict(lambda: [0, None])
        for record in batch:
            if record.body.get("kind") != "explanation":
                continue
            for metric, bucket, value in explanation_buckets(record.body.get("explanation") or {}):
                entry = totals[(record.model_name, record.model_version, metric, bucket)]
                entry[0] += 1
                if value is not None:
                    entry[1] = value if entry[1] is None else max(entry[1], value)
        if not totals:
            return
        keys = ("model_name", "model_version", "metric", "bucket")
        rows = [dict(zip(keys, key, strict=True)) | {"n": n, "vmax": v} for key, (n, v) in totals.items()]
        vmax = quality_counts.c.vmax

        def larger(new: Any) -> Any:
            # NULLs lose: max(stored, new) where both are known, else whichever is
            if conn.dialect.name == "sqlite":
                return func.coalesce(func.max(vmax, new.vmax), vmax, new.vmax)
            return func.greatest(vmax, new.vmax)

        add_counts(conn, quality_counts, rows, ["n"], {"vmax": larger})


class RecordKinds:
    """The projection listing every record that is not an explanation."""

    name = "kinds"
    tables = (record_kinds,)

    def apply(self, conn: Connection, batch: Sequence[StoredRecord]) -> None:
        """Index the batch's non-explanation records."""
        rows = []
        for record in batch:
            body = record.body
            kind = str(body.get("kind") or "unknown")
            if kind == "explanation":
                continue
            detail = next((str(body[k]) for k in DETAIL_KEYS if isinstance(body.get(k), str)), None)
            rows.append(
                {
                    "seq": record.seq,
                    "id": record.id,
                    "kind": kind[:32],
                    "detail": None if detail is None else detail[:64],
                    "model_name": record.model_name,
                    "model_version": record.model_version,
                    "created_at": utc_text(record.created_at),
                }
            )
        if rows:
            conn.execute(insert(record_kinds), rows)


def quality_of(
    conn: Connection, name: str, version: str | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{metric: {bucket: {"n", "vmax"}}}`` of a model version (every version when ``version`` is None)."""
    c = quality_counts.c
    clauses = [c.model_name == name] + ([c.model_version == version] if version is not None else [])
    query = (
        select(c.metric, c.bucket, func.sum(c.n), func.max(c.vmax))
        .where(*clauses)
        .group_by(c.metric, c.bucket)
    )
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for metric, bucket, n, vmax in conn.execute(query):
        out[metric][bucket] = {"n": int(n), "vmax": None if vmax is None else float(vmax)}
    return dict(out)


def kind_counts(conn: Connection, name: str, version: str | None = None) -> dict[str, dict[str, int]]:
    """``{kind: {detail or "": count}}`` of the non-explanation records about a model (version)."""
    c = record_kinds.c
    clauses = [c.model_name == name] + ([c.model_version == version] if version is not None else [])
    query = select(c.kind, c.detail, func.count()).where(*clauses).group_by(c.kind, c.detail)
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for kind, detail, n in conn.execute(query):
        out[kind][detail or ""] = int(n)
    return dict(out)


def latest_of_kind(conn: Connection, kind: str, name: str, version: str) -> tuple[int, str] | None:
    """``(seq, id)`` of the newest record of ``kind`` about a model version, or None."""
    c = record_kinds.c
    query = (
        select(c.seq, c.id)
        .where(c.model_name == name, c.model_version == version, c.kind == kind)
        .order_by(c.seq.desc())
        .limit(1)
    )
    row = conn.execute(query).first()
    return None if row is None else (int(row.seq), str(row.id))
