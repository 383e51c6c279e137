"""The JSON API: blueprints, the OpenAPI document and the one error handler."""

from __future__ import annotations

from flask import Flask

from explain_service.api import (
    access_doc,
    docs,
    errors,
    explanations,
    fairness,
    health,
    incidents,
    models,
    reports,
    reviews,
    suspensions,
    telemetry,
)


def init_app(app: Flask) -> None:
    """Register the API's blueprints and error handlers on ``app``."""
    auth_required = app.extensions["explain"].settings.auth == "required"
    api = errors.ServiceApi(app, spec_kwargs={"extra_plugins": [access_doc.AccessDocPlugin(auth_required)]})
    api.register_blueprint(health.blp)
    api.register_blueprint(models.blp)
    api.register_blueprint(explanations.blp)
    api.register_blueprint(incidents.blp)
    api.register_blueprint(reports.blp)
    api.register_blueprint(fairness.blp)
    api.register_blueprint(reviews.blp)
    api.register_blueprint(suspensions.blp)
    errors.init_app(app)
    telemetry.init_app(app)
    docs.init_app(app)
    app.extensions["explain_api"] = api
