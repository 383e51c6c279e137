"""``/v1/models``: describe, predict and explain registered models."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView

from explain_service import logs
from explain_service.access import caller_name, has_role, requested_model
from explain_service.api import schemas
from explain_service.api.blueprint import Blueprint
from explain_service.api.suspensions import check_not_suspended, suspension_state
from explain_service.errors import ValidationFailed
from explain_service.explainers.shap import supported_outputs
from explain_service.jsonio import json_response
from explain_service.registry.model import LoadedModel, Prepared
from explain_service.service import model_ref
from explain_service.validation import validate_prepared

blp = Blueprint(
    "models", __name__, url_prefix="/v1/models", description="Registered models: describe, predict, explain."
)


# Schema instances, not classes: webargs would build a new schema object on every request.
PREDICT_REQUEST = schemas.PredictRequest()
EXPLAIN_REQUEST = schemas.ExplainRequest()


def _services() -> Any:
    return current_app.extensions["explain"]


def _model(name: str, version: str | None) -> LoadedModel:
    model = requested_model(name, version)
    logs.note(model=model.name, version=model.version)
    return model


def _rows(model: LoadedModel, instances: list[Any]) -> tuple[Prepared, list[dict[str, Any]]]:
    """Validated rows, prepared once for the prediction and every method, and their records."""
    limit = _services().settings.max_instances
    if len(instances) > limit:
        raise ValidationFailed({"instances": [f"At most {limit} instances per request."]})
    return validate_prepared(model, instances)


def describe(model: LoadedModel) -> dict[str, Any]:
    services = _services()
    out = model.describe()
    out["versions"] = services.registry.versions(model.name)
    out["version_status"] = services.registry.status(model.name)
    out["methods"] = [
        m for m in services.service.method_names() if services.service.explainers[m].supports(model)
    ]
    out["shap_outputs"] = list(supported_outputs(model))
    if not has_role("review"):
        out.pop("libraries", None)  # exact versions help an attacker more than a calling system
    out["review_rules"] = model.manifest.review_rules.to_dict()
    out["suspension"] = suspension_state(model.name, model.version)
    return out


@blp.route("")
class ModelsView(MethodView):
    @blp.response(200, schemas.ModelList)
    def get(self) -> Any:
        """List registered models with their versions; broken versions are marked, not hidden."""
        registry = _services().registry
        items = []
        for name in registry.names():
            versions = registry.versions(name)
            if not versions:
                continue
            status = registry.status(name)
            healthy = [s["version"] for s in status if s["status"] == "available"]
            item: dict[str, Any] = {
                "name": name,
                "versions": versions,
                "default_version": healthy[-1] if healthy else None,
                "version_status": status,
            }
            if healthy:
                m = registry.get(name, healthy[-1])
                item.update(task=m.task, description=m.manifest.description)
            items.append(item)
        return json_response({"models": items})


@blp.route("/<name>")
class ModelView(MethodView):
    @blp.response(200, schemas.ModelDescription)
    @blp.alt_response(404, schema=schemas.ErrorResponse)
    @blp.alt_response(503, schema=schemas.ErrorResponse)
    def get(self, name: str) -> Any:
        """Describe a model's newest healthy version: schema, classes, methods."""
        return json_response(describe(_model(name, None)))


@blp.route("/<name>/versions/<version>")
class ModelVersionView(MethodView):
    @blp.response(200, schemas.ModelDescription)
    @blp.alt_response(404, schema=schemas.ErrorResponse)
    @blp.alt_response(503, schema=schemas.ErrorResponse)
    def get(self, name: str, version: str) -> Any:
        """Describe one version of a model."""
        return json_response(describe(_model(name, version)))


def _served(name: str, version: str | None) -> LoadedModel:
    """The model a :predict or :explain request is answered by; 503 while it is suspended."""
    model = _model(name, version)
    check_not_suspended(model.name, model.version)
    return model


def _predict(body: dict[str, Any], name: str, version: str | None) -> Any:
    model = _served(name, version)
    rows, _ = _rows(model, body["instances"])
    pred = _services().service.predict(model, rows)
    return json_response({"model": model_ref(model), "predictions": pred.answers})


def _explain(body: dict[str, Any], name: str, version: str | None) -> Any:
    model = _served(name, version)
    rows, records = _rows(model, body["instances"])
    methods = body["methods"]
    if len(set(methods)) != len(methods):
        raise ValidationFailed({"methods": ["Each method may be asked once."]})
    logs.note(methods=list(methods))
    references = body.get("references")
    if references is not None and len(references) != len(body["instances"]):
        raise ValidationFailed(
            {
                "references": [
                    f"One per instance ({len(body['instances'])}), in the same order; null for none."
                ]
            }
        )
    answer = _services().service.explain(
        model,
        rows,
        methods,
        target=body.get("target"),
        options=body.get("options") or {},
        instances=records,
        caller=caller_name(),
        references=references,
    )
    return json_response(answer)


@blp.route("/<name>:predict")
class PredictView(MethodView):
    @blp.arguments(PREDICT_REQUEST)
    @blp.response(200, schemas.PredictResponse)
    @blp.alt_response(422, schema=schemas.ErrorResponse)
    @blp.alt_response(503, schema=schemas.ErrorResponse)
    def post(self, body: dict[str, Any], name: str) -> Any:
        """Predict with the newest healthy version."""
        return _predict(body, name, None)


@blp.route("/<name>/versions/<version>:predict")
class PredictVersionView(MethodView):
    @blp.arguments(PREDICT_REQUEST)
    @blp.response(200, schemas.PredictResponse)
    @blp.alt_response(422, schema=schemas.ErrorResponse)
    @blp.alt_response(503, schema=schemas.ErrorResponse)
    def post(self, body: dict[str, Any], name: str, version: str) -> Any:
        """Predict with one version."""
        return _predict(body, name, version)


@blp.route("/<name>:explain")
class ExplainView(MethodView):
    @blp.arguments(EXPLAIN_REQUEST)
    @blp.response(200, schemas.ExplainResponse)
    @blp.alt_response(422, schema=schemas.ErrorResponse)
    @blp.alt_response(503, schema=schemas.ErrorResponse)
    def post(self, body: dict[str, Any], name: str) -> Any:
        """Explain instances with the newest healthy version."""
        return _explain(body, name, None)


@blp.route("/<name>/versions/<version>:explain")
class ExplainVersionView(MethodView):
    @blp.arguments(EXPLAIN_REQUEST)
    @blp.response(200, schemas.ExplainResponse)
    @blp.alt_response(422, schema=schemas.ErrorResponse)
    @blp.alt_response(503, schema=schemas.ErrorResponse)
    def post(self, body: dict[str, Any], name: str, version: str) -> Any:
        """Explain instances with one version."""
        return _explain(body, name, version)
