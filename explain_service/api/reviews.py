"""``/v1/explanations/{id}/reviews``: a reviewer's decisions on an explanation, and reading them back.

The events are records in the audit chain; the rules (comments, override decisions, escalations resolved
by admin keys only) and the derived status are :mod:`explain_service.audit.reviews`. Reading is allowed
to the key that created the record (a calling system reads overrides) and to review and admin keys;
posting needs the review role (``access/rules.py``).
"""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView

from explain_service.access import current_principal
from explain_service.api import schemas
from explain_service.api.blueprint import Blueprint
from explain_service.api.explanations import load_record
from explain_service.audit.projections import TrailIndex
from explain_service.jsonio import json_response

blp = Blueprint(
    "reviews",
    __name__,
    url_prefix="/v1/explanations",
    description="Review events: approve, flag, escalate, override; the status they add up to.",
)

REVIEW_REQUEST = schemas.ReviewRequest()


def _index() -> TrailIndex:
    return current_app.extensions["explain"].index  # type: ignore[no-any-return]


@blp.route("/<record_id>/reviews", methods=["GET"])
class ReviewsView(MethodView):
    @blp.response(200, schemas.ReviewList)
    @blp.alt_response(404, schema=schemas.ErrorResponse)
    def get(self, record_id: str) -> Any:
        """An explanation's review events, oldest first, and the status they add up to."""
        record = load_record(record_id)
        index = _index()
        events = index.reviews(record.id)
        state = index.state_of(record.id)
        return json_response(
            {
                "id": record.id,
                "status": state.status,
                "decision": state.decision,
                "reviews": [event.to_dict() for event in events],
            }
        )


@blp.route("/<record_id>/reviews", methods=["POST"])
class AddReviewView(MethodView):
    @blp.arguments(REVIEW_REQUEST)
    @blp.response(201, schemas.ReviewEventSchema)
    @blp.alt_response(403, schema=schemas.ErrorResponse)
    @blp.alt_response(404, schema=schemas.ErrorResponse)
    @blp.alt_response(422, schema=schemas.ErrorResponse)
    @blp.alt_response(503, schema=schemas.ErrorResponse)
    def post(self, body: dict[str, Any], record_id: str) -> Any:
        """Approve, flag, escalate or override an explanation (an append-only event in the audit chain)."""
        record = load_record(record_id)
        principal = current_principal()
        event = _index().add_review(
            record,
            action=body["action"],
            comment=body.get("comment"),
            decision=body.get("decision"),
            by=principal.name,
            role=principal.role,
        )
        return json_response(event.to_dict(), status=201)
