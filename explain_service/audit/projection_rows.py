"""What the trail index makes of one chain record: an explanation row, a review row, a status change.

:mod:`.projections` reads the records and calls these inside its locked batch transaction. An
explanation's quality flags come from :func:`explain_service.quality.quality_flags` (the same rule that
routes it to a human), its routing from the record's ``review``, its reference from ``reference``. Review
events fold into the status of the record they are about with :func:`.reviews.advance`, in ``seq``
order; ``queue_seq`` is set while a record is in the queue, to the seq at which it entered it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, select, update

from explain_service.audit.index_tables import explanations
from explain_service.audit.reviews import QUEUED, ReviewState, advance
from explain_service.audit.search import micros
from explain_service.quality import quality_flags


def explanation_row(row: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The index row of an explanation record (``row``: its seq, id, created_at, model, caller)."""
    explanation = body.get("explanation") or {}
    flags = set(quality_flags(explanation))
    review = body.get("review") or {}
    required = bool(review.get("required"))
    reference = body.get("reference")
    return {
        "seq": row.seq,
        "id": row.id,
        "created_at": row.created_at,
        "created_us": micros(datetime.fromisoformat(row.created_at)),
        "model_name": row.model_name,
        "model_version": row.model_version,
        "caller": row.caller,
        "label": (explanation.get("prediction") or {}).get("label"),
        "reference": reference if isinstance(reference, str) else None,
        "flag_additivity": "additivity_residual" in flags,
        "flag_low_lime": "low_lime_r2" in flags,
        "flag_cf_budget": "counterfactual_budget" in flags,
        "flag_out_of_range": "out_of_range" in flags,
        "review_required": required,
        "review_rules": ",".join(str(rule) for rule in review.get("rules") or ()),
        "status": "unreviewed",
        "decision": None,
        "status_seq": 0,
        "queue_seq": row.seq if required else None,
    }


def review_row(row: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The history row of a review record."""
    decision = body.get("decision")
    return {
        "seq": row.seq,
        "id": row.id,
        "record_id": body["record_id"],
        "created_at": row.created_at,
        "action": str(body.get("action")),
        "comment": str(body.get("comment") or ""),
        "decision": None if decision is None else orjson.dumps(decision).decode(),
        "by": body.get("by"),
        "role": str(body.get("role") or ""),
    }


def _in_queue(status: str, required: bool) -> bool:
    return status in QUEUED or (required and status == "unreviewed")


def apply_reviews(conn: Connection, events: list[dict[str, Any]]) -> None:
    """Fold a batch's review events (in seq order) into the status of the records they are about."""
    ids = sorted({event["record_id"] for event in events})
    e = explanations.c
    current = {
        row.id: row
        for row in conn.execute(
            select(e.id, e.status, e.decision, e.status_seq, e.queue_seq, e.review_required).where(
                e.id.in_(ids)
            )
        )
    }
    changed: dict[str, dict[str, Any]] = {}
    for event in events:
        row = current.get(event["record_id"])
        if row is None:
            continue  # a review of a record that is not an explanation: nothing to show it on
        now = changed.get(row.id) or {
            "state": ReviewState(row.status, _decoded(row.decision), row.status_seq),
            "queue_seq": row.queue_seq,
        }
        before = now["state"]
        after = advance(before, event["action"], event["role"], event["seq"], _decoded(event["decision"]))
        queued_before = _in_queue(before.status, row.review_required)
        queued_after = _in_queue(after.status, row.review_required)
        queue_seq = (
            now["queue_seq"] if queued_before and queued_after else (event["seq"] if queued_after else None)
        )
        changed[row.id] = {"state": after, "queue_seq": queue_seq}
    if not changed:
        return
    statement = (
        update(explanations)
        .where(e.id == bindparam("b_id"))
        .values(
            status=bindparam("b_status"),
            decision=bindparam("b_decision"),
            status_seq=bindparam("b_status_seq"),
            queue_seq=bindparam("b_queue_seq"),
        )
    )
    conn.execute(
        statement,
        [
            {
                "b_id": record_id,
                "b_status": now["state"].status,
                "b_decision": None
                if now["state"].decision is None
                else orjson.dumps(now["state"].decision).decode(),
                "b_status_seq": now["state"].seq,
                "b_queue_seq": now["queue_seq"],
            }
            for record_id, now in changed.items()
        ],
    )


def _decoded(text_value: str | None) -> Any:
    return None if text_value is None else orjson.loads(text_value)
