"""One error shape for every failure: ``{"code", "status", "message", "errors"}``.

A 4xx says what was wrong with the request. A 5xx says only what kind of failure it was and
the request id (also in every answer's ``X-Request-ID``); the exception's text, which may name
files, hosts or databases, goes to the log under that id.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from flask import Flask, Response, g, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from explain_service.audit.store import AuditError
from explain_service.errors import ServiceError, cap_errors, flatten_errors, status_phrase
from explain_service.jsonio import json_response

log = logging.getLogger(__name__)
LOCATIONS = ("json", "query", "path", "headers", "form", "files", "cookies")
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def error_body(status: int, message: str, errors: dict[str, list[str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": status, "status": status_phrase(status), "message": message}
    if errors:
        body["errors"] = cap_errors(errors)
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


def request_id() -> str:
    """This request's id: the caller's ``X-Request-ID`` when it is a plain token, else a new one."""
    rid = g.get("request_id")
    if rid is None:
        offered = request.headers.get(REQUEST_ID_HEADER, "")
        rid = offered if REQUEST_ID_RE.fullmatch(offered) else uuid.uuid4().hex
        g.request_id = rid
    return str(rid)


def server_error_body(status: int, summary: str, fault: bool = True) -> dict[str, Any]:
    """A 5xx body: a fixed summary and the request id; what went wrong is only in the log.

    ``fault=False`` (a refusal someone decided, such as a suspension) names no log: the summary is all.
    """
    if not fault:
        return error_body(status, f"{summary} Request id {request_id()}.")
    return error_body(status, f"{summary} Request id {request_id()}; the details are in the service log.")


def init_app(app: Flask) -> None:
    """Render ServiceError and unexpected exceptions in the JSON error shape; tag answers with a request id."""

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        if exc.status < 500:
            return json_response(exc.to_dict(), exc.status, headers=exc.headers or None)
        level = logging.ERROR if exc.is_fault else logging.INFO
        log.log(level, "%s [request %s]: %s", type(exc).__name__, request_id(), exc.message)
        body = server_error_body(exc.status, exc.public_message, exc.is_fault)
        if exc.detail_is_public and exc.errors:
            body["errors"] = exc.errors
        return json_response(body, exc.status, headers=exc.headers or None)

    @app.errorhandler(AuditError)
    def _audit_error(exc: AuditError) -> Response:
        status = int(getattr(exc, "status", 500))
        if status < 500:
            return json_response(error_body(status, str(exc)), status)
        log.error("audit store [request %s]: %s", request_id(), exc)
        summary = "The audit store is unavailable." if status == 503 else "Internal error."
        return json_response(server_error_body(status, summary), status)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return app.extensions["explain_api"].handle_http_exception(exc)
        log.exception("unhandled error [request %s] %s %s", request_id(), request.method, request.path)
        return json_response(server_error_body(500, "Internal error."), 500)

    @app.after_request
    def _tag(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = request_id()
        return response
