"""``/v1/explanations``: read back, re-verify and draw stored explanations."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request
from flask.views import MethodView

from explain_service.access import require_owner
from explain_service.api import schemas
from explain_service.api.blueprint import Blueprint
from explain_service.audit.store import StoredRecord
from explain_service.errors import ExplanationNotFound, ModelNotFound
from explain_service.explainers.base import canonical_json
from explain_service.jsonio import json_response
from explain_service.service import SAME_TARGET, answer_item
from explain_service.validation import validate_instances

blp = Blueprint(
    "explanations",
    __name__,
    url_prefix="/v1/explanations",
    description="Stored explanations: read, verify, draw.",
)


def _services() -> Any:
    return current_app.extensions["explain"]


def load_record(record_id: str) -> StoredRecord:
    """The stored record, or a 404 (also when an ``explain`` key asks for another key's record)."""
    if len(record_id) > 64:
        raise ExplanationNotFound(record_id[:64] + "...")
    record = _services().audit.get(record_id)
    if record is None or record.body.get("kind") != "explanation":
        raise ExplanationNotFound(record_id)
    require_owner(record.caller, record_id)
    return record


def stored_answer(record: StoredRecord) -> dict[str, Any]:
    """The record in the shape of an ``:explain`` answer, plus its audit fields and review status."""
    body = record.body
    entry = {
        "explanation": body["explanation"],
        "reference": body.get("reference"),
        "review": body.get("review"),
    }
    explanation = answer_item(record.id, entry)
    if explanation["review"] is None:  # recorded without routing (a batch row, or before routing existed)
        del explanation["review"]
    state = _services().index.state_of(record.id)
    return {
        "status": state.status,
        "decision": state.decision,
        "model": body["model"],
        "explanations": [explanation],
        "audit": {
            "seq": record.seq,
            "created_at": record.created_at.isoformat(),
            "caller": record.caller,
            "hash": record.hash,
            "prev_hash": record.prev_hash,
            "instance": body["instance"],
            "request": body["request"],
            "quality": body.get("quality", {}),
            "libraries": body.get("libraries", {}),
            "plot_hashes": body.get("plots", {}),
            "batch": body.get("batch"),  # a batch row's job, input row and the caller's id columns
        },
    }


@blp.route("/<record_id>")
class ExplanationView(MethodView):
    @blp.response(200, schemas.StoredExplanation)
    @blp.alt_response(404, schema=schemas.ErrorResponse)
    def get(self, record_id: str) -> Any:
        """A stored explanation, as answered, with its audit fields."""
        return json_response(stored_answer(load_record(record_id)))


@blp.route("/<record_id>/verify")
class VerifyView(MethodView):
    @blp.response(200, schemas.ReplayReport)
    @blp.alt_response(404, schema=schemas.ErrorResponse)
    def get(self, record_id: str) -> Any:
        """Recompute the explanation from the recorded model, input and parameters; report if identical."""
        return json_response(replay_report(load_record(record_id)))


def replay_report(record: StoredRecord) -> dict[str, Any]:
    """Recompute ``record``'s explanation and compare it with the stored one (also the review pages')."""
    body = record.body
    services = _services()
    ref = body["model"]
    report: dict[str, Any] = {"id": record.id, "model": ref}
    try:
        model = services.registry.get(ref["name"], ref["version"])
    except ModelNotFound:
        return {**report, "identical": False, "reason": "the recorded model version is gone"}
    if model.sha256 != ref["sha256"]:
        return {**report, "identical": False, "reason": f"the model's files changed (now {model.sha256})"}
    rows, records = validate_instances(model, [body["instance"]])
    req = body["request"]
    answer = services.service.explain(
        model,
        rows,
        req["methods"],
        target=req["target"],
        options=req["options"],
        instances=records,
        record=False,
        counterfactual_target=req.get("counterfactual_target", SAME_TARGET),
    )
    fresh = dict(answer["explanations"][0])
    for answered_only in ("id", "plots", "review", "reference"):  # not part of the recomputation
        fresh.pop(answered_only, None)
    stored = body["explanation"]
    differing = sorted(
        k for k in set(stored) | set(fresh) if canonical_json(stored.get(k)) != canonical_json(fresh.get(k))
    )
    report.update(identical=not differing, differing=differing)
    if differing:
        report["reason"] = "recomputed parts differ: " + ", ".join(differing)
    return report


@blp.route("/<record_id>/plots/<plot>.png")
class PlotView(MethodView):
    @blp.doc(responses={"200": {"description": "PNG image", "content": {"image/png": {}}}})
    @blp.alt_response(404, schema=schemas.ErrorResponse)
    def get(self, record_id: str, plot: str) -> Any:
        """A plot of a stored explanation, rendered on first request and then served from its cache."""
        record = load_record(record_id)
        body = record.body
        key, data, _ = _services().plots.get_or_render(
            plot, body["explanation"], body["instance"], body["model"]
        )
        headers = {"ETag": f'"{key}"', "Cache-Control": "public, max-age=31536000, immutable"}
        # RFC 9110 13.1.2: weak comparison, and "*" matches any current representation.
        if request.if_none_match.contains_weak(key):
            return Response(status=304, headers=headers)
        return Response(data, mimetype="image/png", headers=headers)
