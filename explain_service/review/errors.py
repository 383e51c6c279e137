"""Errors on the pages are pages: the same exceptions as the API, rendered as HTML.

A browser asking a ``/review/`` route (the guard's 401 and 403 included: Flask picks a blueprint's
handlers by the matched route, also for errors raised before the view) gets an HTML page with the status
and the message; a 401 page links to the login form. A client that prefers JSON (``Accept: application/json``)
gets the API's error shape. A 5xx says only its summary and the request id; the details go to the log.
"""

from __future__ import annotations

import logging

from flask import Response, render_template, request
from werkzeug.exceptions import HTTPException

from explain_service.api.errors import error_body, request_id, server_error_body
from explain_service.audit.store import AuditError
from explain_service.errors import ServiceError, status_phrase
from explain_service.jsonio import json_response
from explain_service.review.blueprint import blp

log = logging.getLogger(__name__)


def wants_json() -> bool:
    """Whether the client prefers JSON to HTML (a script, not a browser)."""
    return request.accept_mimetypes.best_match(["text/html", "application/json"]) == "application/json"


def error_page(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    errors: dict[str, list[str]] | None = None,
) -> Response:
    """The HTML error page."""
    if status == 401 and "Authorization" not in request.headers:
        # A person in a browser, not a script: the guard's message speaks of headers they never send.
        message = "You are not signed in, or your session has ended."
    html = render_template(
        "review/error.html",
        status=status,
        phrase=status_phrase(status),
        message=message,
        errors=errors or {},
        rid=request_id(),
    )
    # A 401 keeps its "WWW-Authenticate: Bearer" challenge: browsers prompt only for Basic and Digest.
    return Response(html, status=status, mimetype="text/html", headers=headers)


@blp.errorhandler(ServiceError)
def _service_error(exc: ServiceError) -> Response:
    errors = exc.errors if exc.status < 500 or exc.detail_is_public else None
    return _render(exc.status, exc.public_message, exc, exc.headers, errors)


@blp.errorhandler(AuditError)
def _audit_error(exc: AuditError) -> Response:
    status = int(getattr(exc, "status", 500))
    return _render(status, str(exc) if status < 500 else "The audit store is unavailable.", exc)


@blp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    return _render(status, exc.description or status_phrase(status), exc)


@blp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error [request %s] %s %s", request_id(), request.method, request.path)
    return _render(500, "Internal error.", exc)


def _render(
    status: int,
    message: str,
    exc: Exception,
    headers: dict[str, str] | None = None,
    errors: dict[str, list[str]] | None = None,
) -> Response:
    fault = not isinstance(exc, ServiceError) or exc.is_fault
    if status >= 500 and isinstance(exc, ServiceError | AuditError):
        log.log(
            logging.ERROR if fault else logging.INFO,
            "%s [request %s]: %s",
            type(exc).__name__,
            request_id(),
            exc,
        )
        message = message if isinstance(exc, ServiceError) else "Internal error."
    if wants_json():
        body = (
            error_body(status, message, errors) if status < 500 else server_error_body(status, message, fault)
        )
        return json_response(body, status, headers=headers or None)
    return error_page(status, message, headers, errors)
