"""The forms that change something, and re-verify: review events, suspend and resume, and recomputing.

Each form that changes something is a POST with the session's CSRF token (checked by the blueprint before
the view). Re-verify changes nothing and stores nothing, so it is a GET of its own URL: reloading the
result recomputes it without the browser asking to send a form again. A review that
breaks a rule of :mod:`explain_service.audit.reviews` shows the detail page again with the message next
to the field (422) or the 403 page; a stored review answers 303 back to the detail page, so reloading
it does not post twice.
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from explain_service.access import current_principal
from explain_service.api.explanations import replay_report
from explain_service.api.suspensions import change_suspension
from explain_service.errors import BadRequest, ValidationFailed
from explain_service.review.blueprint import blp
from explain_service.review.pages import render_detail
from explain_service.review.record_view import record_view


@blp.route("/explanations/<record_id>/reviews", methods=["POST"])
def add_review(record_id: str) -> BaseResponse:
    """Approve, flag, escalate or override an explanation (an append-only review event)."""
    view = record_view(record_id)
    form = {k: request.form.get(k, "") for k in ("action", "comment", "decision")}
    principal = current_principal()
    decision: Any = _decision(form["decision"], view.class_names) if form["action"] == "override" else None
    try:
        current_app.extensions["explain"].index.add_review(
            view.record,
            action=form["action"],
            comment=form["comment"] or None,
            decision=decision,
            by=principal.name,
            role=principal.role,
        )
    except ValidationFailed as exc:
        html = render_detail(view, form=form, form_errors=exc.errors)
        return Response(html, status=422, mimetype="text/html")
    return redirect(url_for("review.explanation", record_id=view.id, _anchor="history"), code=303)


def _decision(raw: str, class_names: list[str]) -> Any:
    """The override's decision: a class name, or a number for a regression model (checked downstream)."""
    if class_names or not raw.strip():
        return raw or None
    try:
        return float(raw)
    except ValueError:
        return raw


@blp.route("/explanations/<record_id>/verify", methods=["GET"])
def verify(record_id: str) -> Response:
    """Re-run the explanation from the recorded model, input and parameters; show identical or the differences."""
    view = record_view(record_id)
    report = replay_report(view.record)
    return Response(render_detail(view, verify=report), mimetype="text/html")


@blp.route("/models/<name>/suspension", methods=["POST"])
def suspend(name: str) -> BaseResponse:
    """Suspend or resume a model version or a whole model (admin), then go back to the record shown."""
    form = {k: request.form.get(k, "").strip() for k in ("action", "scope", "version", "reason", "record")}
    if form["action"] not in ("suspend", "resume") or form["scope"] not in ("model", "version"):
        raise BadRequest("The form must say suspend or resume, and a version or the whole model")
    version = form["version"] if form["scope"] == "version" else None
    change_suspension(form["action"], name, version, form["reason"])
    if form["record"]:
        return redirect(
            url_for("review.explanation", record_id=form["record"], _anchor="model-state"), code=303
        )
    return redirect(url_for("review.explanations"), code=303)
