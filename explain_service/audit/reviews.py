"""Review events: a reviewer's decision on an explanation, as an append-only record in the audit chain.

A review is appended to the same hash chain as the explanation it is about, so ``audit verify`` covers
it; its envelope carries the reviewed model's name, version and sha256, and ``caller`` is the reviewer's
key. Its body::

    {"kind": "review", "record_id": str, "action": "approve" | "flag" | "escalate" | "override",
     "comment": str, "decision": class name (override only, else null), "by": key name | null,
     "role": "review" | "admin"}

Rules (checked by :func:`check_review` before anything is written; a breach is a 422 naming the field,
or a 403):

- ``comment`` is required (non-blank) for flag, escalate and override; at most :data:`MAX_COMMENT`
  characters for every action.
- ``decision`` is given for override only, and must be one of the model's class names (the classes the
  record's prediction names); for a regression model, a finite number.
- Once a record is escalated, only an ``admin`` key may act on it (approve or override resolves the
  escalation; flag sends it back to the reviewers' queue). A ``review`` key is refused with 403.

The status is derived from the events, oldest first (:func:`fold`): none -> ``unreviewed``; then the
latest event decides: approve -> ``approved``, flag -> ``flagged``, escalate -> ``escalated``, override ->
``overridden`` (with its ``decision``). The escalation rule is also part of the fold: an event by a
non-admin key on an escalated record does not change its status, so a reviewer who raced an escalation
(both checked against the same old status) cannot undo it.

Public interface (stable; the reviewer pages and other modules build on it)::

    ACTIONS, STATUSES, NEEDS_COMMENT, MAX_COMMENT
    ReviewEvent                          one event as read back (seq, id, record_id, action, comment, ...)
    ReviewState(status, decision, seq)   a record's derived status; UNREVIEWED is the start
    fold(events) -> ReviewState          the status after ``events`` (oldest first)
    advance(state, event) -> ReviewState one step of the fold
    check_review(record, action, comment, decision, role, current) -> None   raises ValidationFailed/Forbidden
    review_entry(record, action, comment, decision, by, role) -> AuditEntry  the chain entry to append

Appending and reading them back (with the status kept up to date) is :class:`.projections.TrailIndex`:
``add_review`` and ``reviews``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from explain_service.audit.chain import AuditEntry, StoredRecord, utc_text
from explain_service.errors import Forbidden, ValidationFailed

ACTIONS = ("approve", "flag", "escalate", "override")
STATUSES = ("unreviewed", "approved", "flagged", "escalated", "overridden")
NEEDS_COMMENT = frozenset({"flag", "escalate", "override"})
MAX_COMMENT = 4000
QUEUED = frozenset({"flagged", "escalated"})
"""Statuses that put a record in the reviewers' queue (with records that need a review and have none)."""
RESOLVER_ROLE = "admin"

_STATUS_OF = {"approve": "approved", "flag": "flagged", "escalate": "escalated", "override": "overridden"}


@dataclass(frozen=True)
class ReviewEvent:
    """One review event as stored: its chain position and id, and what the reviewer did."""

    seq: int
    id: str
    record_id: str
    action: str
    comment: str
    decision: str | float | None
    by: str | None
    role: str
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the API's review object)."""
        return {**asdict(self), "created_at": utc_text(self.created_at)}

    @classmethod
    def from_record(cls, record: StoredRecord) -> ReviewEvent:
        """The event a ``kind: review`` record holds."""
        body = record.body
        return cls(
            seq=record.seq,
            id=record.id,
            record_id=str(body["record_id"]),
            action=str(body["action"]),
            comment=str(body.get("comment") or ""),
            decision=body.get("decision"),
            by=body.get("by"),
            role=str(body.get("role") or ""),
            created_at=record.created_at,
        )


@dataclass(frozen=True)
class ReviewState:
    """A record's derived review status; ``seq`` is the chain position of the event that set it (0: none)."""

    status: str = "unreviewed"
    decision: str | float | None = None
    seq: int = 0


UNREVIEWED = ReviewState()


def advance(state: ReviewState, action: str, role: str, seq: int, decision: Any = None) -> ReviewState:
    """The status after one event; a non-admin event leaves an escalated record as it is."""
    if state.status == "escalated" and role != RESOLVER_ROLE:
        return state
    status = _STATUS_OF.get(action)
    if status is None:  # an action this version does not know changes nothing
        return state
    return ReviewState(status, decision if action == "override" else None, seq)


def fold(events: Iterable[ReviewEvent]) -> ReviewState:
    """The status after ``events``, oldest first."""
    state = UNREVIEWED
    for event in events:
        state = advance(state, event.action, event.role, event.seq, event.decision)
    return state


def class_names_of(record: StoredRecord) -> list[str] | None:
    """The class names a record's prediction names (None for a regression model)."""
    prediction = (record.body.get("explanation") or {}).get("prediction") or {}
    probabilities = prediction.get("probabilities")
    if isinstance(probabilities, Mapping):
        return [str(name) for name in probabilities]
    return None


def check_review(
    record: StoredRecord,
    action: Any,
    comment: Any,
    decision: Any,
    role: str,
    current: ReviewState,
) -> None:
    """Refuse a review that breaks the rules in the module docstring.

    Raises
    ------
    ValidationFailed
        422 naming ``action``, ``comment`` or ``decision``.
    Forbidden
        403: the record is escalated and ``role`` is not admin.
    """
    errors: dict[str, list[str]] = {}
    if action not in ACTIONS:
        errors["action"] = [f"Must be one of: {', '.join(ACTIONS)}."]
    if comment is not None and not isinstance(comment, str):
        errors["comment"] = ["Not a valid string."]
    elif comment is not None and len(comment) > MAX_COMMENT:
        errors["comment"] = [f"At most {MAX_COMMENT} characters."]
    elif action in NEEDS_COMMENT and not (comment or "").strip():
        errors["comment"] = [f"A comment is required to {action}."]
    if action == "override":
        problem = _decision_problem(record, decision)
        if problem:
            errors["decision"] = [problem]
    elif decision is not None:
        errors["decision"] = ["Only an override takes a decision."]
    if errors:
        raise ValidationFailed(errors)
    if current.status == "escalated" and role != RESOLVER_ROLE:
        raise Forbidden(
            "This explanation is escalated: only an admin key may resolve it (approve, override) or flag it"
        )


def _decision_problem(record: StoredRecord, decision: Any) -> str | None:
    names = class_names_of(record)
    if names is None:
        ok = isinstance(decision, int | float) and not isinstance(decision, bool) and math.isfinite(decision)
        return None if ok else "An override of a regression model's value must be a finite number."
    if not isinstance(decision, str) or decision not in names:
        return f"Must be one of the model's classes: {', '.join(names)}."
    return None


def review_body(
    record_id: str, action: str, comment: str | None, decision: Any, by: str | None, role: str
) -> dict[str, Any]:
    """The body of a review record (see the module docstring)."""
    return {
        "kind": "review",
        "record_id": record_id,
        "action": action,
        "comment": comment or "",
        "decision": decision,
        "by": by,
        "role": role,
    }


def review_entry(
    record: StoredRecord, action: str, comment: str | None, decision: Any, by: str | None, role: str
) -> AuditEntry:
    """The chain entry of a review of ``record``, filed under the reviewed model."""
    return AuditEntry(
        body=review_body(record.id, action, comment, decision, by, role),
        model_name=record.model_name,
        model_version=record.model_version,
        model_sha256=record.model_sha256,
        caller=by,
    )
