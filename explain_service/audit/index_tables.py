"""The trail index's tables: derived from the audit chain, rebuildable, in the same database.

Nothing here is evidence: every row is computed from ``audit_records`` by :mod:`.projections`, and
dropping these tables loses nothing (the next read builds them again from the chain)::

    audit_index_explanations   one row per explanation record (its seq), kept current with its reviews
    seq │ id │ created_at │ created_us │ model_name │ model_version │ caller │ label │ reference
        │ flag_additivity │ flag_low_lime │ flag_cf_budget │ flag_out_of_range
        │ review_required │ review_rules │ status │ decision │ status_seq │ queue_seq

    audit_index_reviews        one row per review record, for a record's history
    seq │ id │ record_id │ created_at │ action │ comment │ decision │ by │ role

    audit_index_state          name -> value: "trail" the last seq read, "explanations" how many
    name │ value                  explanation rows there are (the unfiltered total), "format" the tables' format

``decision`` is the override's decision as JSON text (a class name, or a number for a regressor).
``queue_seq`` is set while a record is in the reviewers' queue (flagged, escalated, or it needs a review
and has none): the seq at which it entered, so the queue is oldest first. Each list filter has an index
that ends in ``seq`` (the flags have partial indexes on the rows that carry them), so a filtered page is
a backwards walk of one index, stopped after ``limit`` rows: keyset pagination, never OFFSET. On
PostgreSQL each of those indexes also carries every other filter column (INCLUDE), so counting the
matches of any combination of filters reads one index and no table rows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Index, MetaData, String, Table, Text

metadata = MetaData()

explanations = Table(
    "audit_index_explanations",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("id", String(64), nullable=False, unique=True),
    Column("created_at", String(32), nullable=False),
    Column("created_us", BigInteger, nullable=False),  # created_at in microseconds since 1970 (UTC)
    Column("model_name", String, nullable=False),
    Column("model_version", String, nullable=False),
    Column("caller", String, nullable=True),
    Column("label", String, nullable=True),
    Column("reference", String(128), nullable=True),
    Column("flag_additivity", Boolean, nullable=False),
    Column("flag_low_lime", Boolean, nullable=False),
    Column("flag_cf_budget", Boolean, nullable=False),
    Column("flag_out_of_range", Boolean, nullable=False),
    Column("review_required", Boolean, nullable=False),
    Column("review_rules", String, nullable=False),
    Column("status", String(16), nullable=False),
    Column("decision", String, nullable=True),
    Column("status_seq", BigInteger, nullable=False),
    Column("queue_seq", BigInteger, nullable=True),
)

FLAG_COLUMNS = {
    "additivity_residual": explanations.c.flag_additivity,
    "low_lime_r2": explanations.c.flag_low_lime,
    "counterfactual_budget": explanations.c.flag_cf_budget,
    "out_of_range": explanations.c.flag_out_of_range,
}
"""Each quality flag (:data:`explain_service.quality.QUALITY_FLAGS`) and the column that holds it."""

_e = explanations.c
# Every filter column rides along in each filter index (PostgreSQL INCLUDE), so a filtered count is an
# index-only scan of the most selective index, never a heap fetch per match.
FILTERED = ("model_name", "model_version", "label", "status", "caller", "created_us", "review_required",
            *(column.name for column in FLAG_COLUMNS.values()))  # fmt: skip


def _index(name: str, *keys: str, where: Any = None) -> Index:
    include = [c for c in FILTERED if c not in keys]
    partial = {} if where is None else {"postgresql_where": where, "sqlite_where": where}
    return Index(name, *(_e[k] for k in keys), postgresql_include=include, **partial)


_index("ix_audit_index_model_seq", "model_name", "model_version", "seq")
_index("ix_audit_index_status_seq", "status", "seq")
_index("ix_audit_index_label_seq", "label", "seq")
_index("ix_audit_index_caller_seq", "caller", "seq")
_index("ix_audit_index_created", "created_us", "seq")
_index("ix_audit_index_required_seq", "seq", where=_e.review_required)
for _column in FLAG_COLUMNS.values():
    _index(f"ix_audit_index_flag_{_column.name}", "seq", where=_column)
Index("ix_audit_index_reference_seq", _e.reference, _e.seq)
Index("ix_audit_index_queue", _e.queue_seq, postgresql_include=["model_name"],
      postgresql_where=_e.queue_seq.isnot(None), sqlite_where=_e.queue_seq.isnot(None))  # fmt: skip

reviews = Table(
    "audit_index_reviews",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("id", String(64), nullable=False, unique=True),
    Column("record_id", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("action", String(16), nullable=False),
    Column("comment", Text, nullable=False),
    Column("decision", String, nullable=True),
    Column("by", String, nullable=True),
    Column("role", String(16), nullable=False),
    Index("ix_audit_index_reviews_record", "record_id", "seq"),
)

state = Table(
    "audit_index_state",
    metadata,
    Column("name", String(16), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

TRAIL = "trail"
COUNT = "explanations"
FORMAT = "format"
