"""What the trail index answers: list filters, indexed records, pages (the value objects of the search).

:class:`Filters` is what the reviewers' list may ask; every field left None (or empty) does not
filter. Several ``statuses`` match any of them; several ``flags`` must all be raised. Dates compare
with the record's ``created_at``: ``since`` inclusive, ``until`` exclusive (aware datetimes).
Unknown statuses or flags are a 422 naming ``status`` or ``flags``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement

from explain_service.audit.chain import utc_text
from explain_service.audit.index_tables import FLAG_COLUMNS, explanations
from explain_service.audit.reviews import STATUSES, ReviewEvent
from explain_service.errors import ValidationFailed
from explain_service.quality import QUALITY_FLAGS

__all__ = ["Filters", "IndexedRecord", "Page", "filter_clauses", "indexed", "micros", "review_event"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Filters:
    """The reviewers' list filters (all optional, combined with AND)."""

    model_name: str | None = None
    model_version: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    label: str | None = None
    statuses: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    caller: str | None = None
    reference: str | None = None
    review_required: bool | None = None

    def __post_init__(self) -> None:
        errors: dict[str, list[str]] = {}
        unknown = [s for s in self.statuses if s not in STATUSES]
        if unknown:
            errors["status"] = [f"Unknown status {unknown[0]!r}; one of {', '.join(STATUSES)}."]
        unknown = [f for f in self.flags if f not in QUALITY_FLAGS]
        if unknown:
            errors["flags"] = [f"Unknown flag {unknown[0]!r}; one of {', '.join(QUALITY_FLAGS)}."]
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                errors[name] = ["Needs a time zone."]
        if errors:
            raise ValidationFailed(errors)


@dataclass(frozen=True)
class IndexedRecord:
    """An explanation as the index holds it: where it is in the chain, what it decided, its review status.

    ``flags`` are the quality flags it raised (:data:`explain_service.quality.QUALITY_FLAGS` order);
    ``review_rules`` the routing rules that marked it ``review_required``; ``decision`` the override's
    decision when ``status`` is ``overridden``; ``queue_seq`` is set while it is in the queue.
    """

    seq: int
    id: str
    created_at: datetime
    model_name: str
    model_version: str
    caller: str | None
    label: str | None
    reference: str | None
    flags: tuple[str, ...]
    review_required: bool
    review_rules: tuple[str, ...]
    status: str
    decision: str | float | None
    status_seq: int
    queue_seq: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out.update(
            created_at=utc_text(self.created_at), flags=list(self.flags), review_rules=list(self.review_rules)
        )
        return out


@dataclass(frozen=True)
class Page:
    """One page of a search: ``next_after`` continues it (None on the last page); ``total`` counts all."""

    items: list[IndexedRecord]
    next_after: int | None
    total: int | None


def filter_clauses(filters: Filters) -> list[ColumnElement[bool]]:
    """WHERE clauses on the index for ``filters``."""
    e = explanations.c
    clauses: list[ColumnElement[bool]] = []
    equal = {
        e.model_name: filters.model_name,
        e.model_version: filters.model_version,
        e.label: filters.label,
        e.caller: filters.caller,
        e.reference: filters.reference,
    }
    clauses.extend(column == value for column, value in equal.items() if value is not None)
    if filters.since is not None:
        clauses.append(e.created_us >= micros(filters.since))
    if filters.until is not None:
        clauses.append(e.created_us < micros(filters.until))
    if len(filters.statuses) == 1:
        clauses.append(e.status == filters.statuses[0])
    elif filters.statuses:
        clauses.append(e.status.in_(filters.statuses))
    clauses.extend(FLAG_COLUMNS[flag] for flag in filters.flags)  # type: ignore[misc]
    if filters.review_required is not None:
        clauses.append(e.review_required if filters.review_required else ~e.review_required)
    return clauses


def micros(moment: datetime) -> int:
    """An aware datetime as whole microseconds since 1970-01-01 UTC (how the index stores times)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _decoded(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


def indexed(row: Any) -> IndexedRecord:
    """A row of ``audit_index_explanations`` as a record."""
    flags = tuple(name for name, column in FLAG_COLUMNS.items() if getattr(row, column.name))
    return IndexedRecord(
        seq=int(row.seq),
        id=row.id,
        created_at=datetime.fromisoformat(row.created_at),
        model_name=row.model_name,
        model_version=row.model_version,
        caller=row.caller,
        label=row.label,
        reference=row.reference,
        flags=flags,
        review_required=bool(row.review_required),
        review_rules=tuple(r for r in row.review_rules.split(",") if r),
        status=row.status,
        decision=_decoded(row.decision),
        status_seq=int(row.status_seq),
        queue_seq=None if row.queue_seq is None else int(row.queue_seq),
    )


def review_event(row: Any) -> ReviewEvent:
    """A row of ``audit_index_reviews`` as an event."""
    return ReviewEvent(
        seq=int(row.seq),
        id=row.id,
        record_id=row.record_id,
        action=row.action,
        comment=row.comment,
        decision=_decoded(row.decision),
        by=row.by,
        role=row.role,
        created_at=datetime.fromisoformat(row.created_at),
    )
