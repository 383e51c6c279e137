"""``POST /v1/models/{name}:fairness``: a bias audit of the rows and labels sent (review role)."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView

from explain_service.access import caller_name
from explain_service.api import fairness_schemas as schemas
from explain_service.api.blueprint import Blueprint
from explain_service.api.schemas import ErrorResponse
from explain_service.errors import ValidationFailed
from explain_service.fairness.audit import AuditPlan, answer, positive_class, resolve_sensitive
from explain_service.fairness.data import audit_instances
from explain_service.fairness.record import store_audit
from explain_service.jsonio import json_response

blp = Blueprint(
    "fairness",
    __name__,
    url_prefix="/v1/models",
    description="Bias audits and global explanations of registered models.",
)

FAIRNESS_REQUEST = schemas.FairnessRequest()


def _services() -> Any:
    return current_app.extensions["explain"]


def _audit(body: dict[str, Any], name: str, version: str | None) -> Any:
    services = _services()
    limit = services.settings.fairness_max_rows
    if len(body["instances"]) > limit:
        raise ValidationFailed(
            {"instances": [f"At most {limit} instances per audit; audit files with the CLI."]}
        )
    model = services.registry.get(name, version)
    positive = positive_class(model)
    plan = AuditPlan(
        sensitive=resolve_sensitive(model, body["sensitive"], body["bins"]),
        positive=positive,
        intersect=body["intersect"],
        resamples=body["resamples"],
        seed=body["seed"],
    )
    acc, data = audit_instances(model, body["instances"], body["labels"], plan)
    result = answer(model, acc, None, data)
    return json_response(store_audit(services.audit, model, plan, None, result, caller_name()))


@blp.route("/<name>:fairness")
class FairnessView(MethodView):
    @blp.arguments(FAIRNESS_REQUEST)
    @blp.response(200, schemas.FairnessAnswer)
    @blp.alt_response(422, schema=ErrorResponse)
    @blp.alt_response(503, schema=ErrorResponse)
    def post(self, body: dict[str, Any], name: str) -> Any:
        """Audit the newest healthy version on labelled instances; the audit is stored as a record."""
        return _audit(body, name, None)


@blp.route("/<name>/versions/<version>:fairness")
class FairnessVersionView(MethodView):
    @blp.arguments(FAIRNESS_REQUEST)
    @blp.response(200, schemas.FairnessAnswer)
    @blp.alt_response(422, schema=ErrorResponse)
    @blp.alt_response(503, schema=ErrorResponse)
    def post(self, body: dict[str, Any], name: str, version: str) -> Any:
        """Audit one version on labelled instances."""
        return _audit(body, name, version)
