"""One error shape for every failure: ``{"code", "status", "message", "errors"}``."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from explain_service.audit.store import AuditError
from explain_service.errors import ServiceError, flatten_errors, status_phrase
from explain_service.jsonio import json_response

log = logging.getLogger(__name__)
LOCATIONS = ("json", "query", "path", "headers", "form", "files", "cookies")


def error_body(status: int, message: str, errors: dict[str, list[str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": status, "status": status_phrase(status), "message": message}
    if errors:
        body["errors"] = errors
    return body


class ServiceApi(Api):
    """flask-smorest's Api, with request-parsing errors flattened to dotted field names."""

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        status = error.code or 500
        data = getattr(error, "data", None) or {}
        messages = data.get("messages") if isinstance(data, dict) else None
        flat: dict[str, list[str]] = {}
        if isinstance(messages, dict):
            for location, errs in messages.items():
                flat.update(flatten_errors(errs, "" if location in LOCATIONS else str(location)))
        message = data.get("message") if isinstance(data, dict) and data.get("message") else None
        if message is None:
            if flat:
                message = "Invalid request: " + ", ".join(sorted(flat)[:5])
            else:
                message = error.description or status_phrase(status)
        return json_response(
            error_body(status, str(message), flat), status, headers=dict(error.get_headers()[1:])
        )


def init_app(app: Flask) -> None:
    """Render ServiceError and unexpected exceptions in the JSON error shape."""

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        if exc.status >= 500:
            log.error("service error: %s", exc.message)
        return json_response(exc.to_dict(), exc.status)

    @app.errorhandler(AuditError)
    def _audit_error(exc: AuditError) -> Response:
        log.error("audit store: %s", exc)
        status = int(getattr(exc, "status", 500))
        return json_response(error_body(status, str(exc)), status)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return app.extensions["explain_api"].handle_http_exception(exc)
        log.exception("unhandled error")
        return json_response(error_body(500, "Internal error; it has been logged."), 500)
