"""Bias audits and global explanations of a model (review role).

* ``POST /v1/models/{name}:fairness``: a bias audit of the rows and labels sent.
* ``GET /v1/models/{name}/importance``: mean |SHAP| per feature over the background, and per
  sensitive group; ``GET /v1/models/{name}/plots/beeswarm.png`` draws the same values. Both are
  computed once per model version and worker, then kept.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
from flask import Response, current_app, request
from flask.views import MethodView

from explain_service.access import caller_name
from explain_service.api import fairness_schemas as schemas
from explain_service.api.blueprint import Blueprint
from explain_service.api.schemas import ErrorResponse
from explain_service.errors import ValidationFailed
from explain_service.fairness.audit import AuditPlan, answer, positive_class, resolve_sensitive
from explain_service.fairness.data import count_audit_rows, label_errors, validate_audit_rows
from explain_service.fairness.groups import group_labels
from explain_service.fairness.importance import GlobalImportance, global_importance
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
    model = services.registry.get(name, version)
    positive = positive_class(model)
    frame, records, sensitive = _checked(body, model, services.settings.fairness_max_rows)
    plan = AuditPlan(
        sensitive=sensitive,
        positive=positive,
        intersect=body["intersect"],
        resamples=body["resamples"],
        seed=body["seed"],
    )
    acc, data = count_audit_rows(model, frame, records, body["labels"], plan)
    result = answer(model, acc, None, data)
    return json_response(store_audit(services.audit, model, plan, None, result, caller_name()))


def _checked(
    body: dict[str, Any], model: Any, limit: int
) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """Rows, records and groupings of a request, or one 422 naming every bad field at once.

    Too many instances are refused before any is read; the groupings and labels are still checked.
    """
    errors: dict[str, list[str]] = {}
    sensitive: dict[str, Any] = {}
    try:
        sensitive = resolve_sensitive(model, body["sensitive"], body["bins"])
    except ValidationFailed as exc:
        errors.update(exc.errors)
    frame: pd.DataFrame | None = None
    records: list[dict[str, Any]] = []
    if len(body["instances"]) > limit:
        errors["instances"] = [f"At most {limit} instances per audit; audit files with the CLI."]
        errors.update(label_errors(model, body["labels"], len(body["instances"])))
    else:
        try:
            frame, records = validate_audit_rows(model, body["instances"], body["labels"])
        except ValidationFailed as exc:
            errors.update(exc.errors)
    if errors:
        raise ValidationFailed(errors)
    return frame, records, sensitive


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


def _importance(name: str) -> tuple[Any, GlobalImportance]:
    model = _services().registry.get(name, None)
    return model, model.cached("global_importance", lambda: global_importance(model))


@blp.route("/<name>/importance")
class ImportanceView(MethodView):
    @blp.response(200, schemas.ImportanceAnswer)
    @blp.alt_response(404, schema=ErrorResponse)
    @blp.alt_response(503, schema=ErrorResponse)
    def get(self, name: str) -> Any:
        """Mean |SHAP| per feature over the background sample, overall and per sensitive group."""
        return json_response(_importance(name)[1].to_dict())


@blp.route("/<name>/plots/beeswarm.png")
class BeeswarmView(MethodView):
    @blp.arguments(schemas.BeeswarmQuery, location="query")
    @blp.doc(responses={"200": {"description": "PNG image", "content": {"image/png": {}}}})
    @blp.alt_response(404, schema=ErrorResponse)
    @blp.alt_response(422, schema=ErrorResponse)
    def get(self, query: dict[str, Any], name: str) -> Any:
        """Beeswarm summary of the SHAP values over the background sample, or over one sensitive group."""
        model, result = _importance(name)
        feature, group = query["feature"], query["group"]
        rows = _group_rows(model, result, feature, group)
        data = model.cached(f"beeswarm_png:{feature}:{group}", lambda: _draw(model, result, rows))
        key = hashlib.sha256(f"{model.sha256}:{feature}:{group}".encode()).hexdigest()[:32]
        headers = {"ETag": f'"{key}"', "Cache-Control": "private, max-age=3600"}
        if request.if_none_match.contains_weak(key):
            return Response(status=304, headers=headers)
        return Response(data, mimetype="image/png", headers=headers)


def _group_rows(model: Any, result: GlobalImportance, feature: str | None, group: str | None) -> np.ndarray:
    """The rows to draw: all, or those of one group of a sensitive feature (422 naming the field)."""
    if feature is None and group is None:
        return np.ones(len(result.rows), dtype=bool)
    if feature not in result.by_group:
        raise ValidationFailed(
            {"feature": [f"Not a sensitive feature of this model ({', '.join(result.by_group)})."]}
        )
    labels = group_labels(result.rows[feature], model.manifest.sensitive[feature])
    if group not in result.by_group[feature]:
        raise ValidationFailed({"group": [f"No group {group!r} of {feature!r} in the reference rows."]})
    return np.asarray(labels == group)


def _draw(model: Any, result: GlobalImportance, rows: np.ndarray) -> bytes:
    from explain_service.plots.beeswarm import beeswarm
    from explain_service.plots.render import render_png

    numeric = [f.name for f in model.schema.features if f.is_numeric]
    fig = beeswarm(
        result.values[rows],
        result.rows[rows],
        result.model,
        numeric=numeric,
        output=result.output,
        target=result.target,
    )
    return render_png(fig)
